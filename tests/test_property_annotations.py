"""Properties of the annotation readers: any valid record round-trips into a Sample; any record
with one required key removed is rejected naming that key, its item and its line."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlc.data.annotations import AnnotationError, read_llava_json, read_mc_json

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(lambda s: s.strip())
path_part = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=10)
video = st.builds(lambda parts, ext: "/".join(parts) + ext, st.lists(path_part, min_size=1, max_size=3),
                  st.sampled_from([".mp4", ".webm", ".mkv", ""]))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(path_part, inner, max_size=3),
    max_leaves=6,
)
seconds = st.floats(0, 1e5, allow_nan=False, allow_infinity=False)
SUFFIXES = st.sampled_from([".json", ".jsonl"])


@st.composite
def window(draw) -> dict:
    """No window, only a start, only an end, or start < end."""
    kind = draw(st.sampled_from(["none", "start", "end", "both"]))
    if kind == "none":
        return {}
    if kind == "start":
        return {"start": draw(seconds)}
    if kind == "end":
        return {"end": draw(seconds)}
    start = draw(seconds)
    return {"start": start, "end": start + draw(st.floats(1e-3, 1e4))}


@st.composite
def mc_record(draw) -> dict:
    candidates = draw(st.lists(text, min_size=2, max_size=6, unique=True))
    record = {"video": draw(video), "question": draw(text), "candidates": candidates,
              "answer": draw(st.sampled_from(candidates)), **draw(window())}
    if draw(st.booleans()):
        record["task"] = draw(text)
    if draw(st.booleans()):
        record["meta"] = draw(st.dictionaries(path_part, json_value, max_size=3))
    extra = draw(st.dictionaries(path_part.map(lambda k: f"x_{k}"), json_value, max_size=2))
    return {**record, **extra}


@st.composite
def llava_record(draw) -> dict:
    human, gpt = draw(text), draw(text)
    placeholder = draw(st.sampled_from(["", "<video>\n", "<image>\n"]))
    turns = [{"from": "human", "value": placeholder + human}, {"from": "gpt", "value": gpt}]
    if draw(st.booleans()):  # a second round, kept in meta
        turns += [{"from": "human", "value": draw(text)}, {"from": "gpt", "value": draw(text)}]
    record = {"video": draw(video), "conversations": turns, **draw(window())}
    extra = draw(st.dictionaries(path_part.map(lambda k: f"x_{k}"), json_value, max_size=2))
    return {**record, **extra}


def with_ids(records: list[dict], draw_ids: list) -> list[dict]:
    return [{**r, "id": i} if i is not None else r for r, i in zip(records, draw_ids)]


def unique_ids(n: int, allow_default: bool):
    one = (st.none() if allow_default else st.nothing()) | st.integers(0, 10**6) | path_part.map(lambda s: f"id-{s}")
    return st.lists(one, min_size=n, max_size=n).filter(
        lambda ids: len({str(i) for i in ids if i is not None}) == sum(i is not None for i in ids)
    )


@contextmanager
def written(records: list[dict], suffix: str) -> Iterator[Path]:
    """The records as ``ann.json`` (a list, indented) or ``ann.jsonl`` in a fresh temporary folder."""
    with tempfile.TemporaryDirectory(prefix="vlc-prop-") as folder:
        path = Path(folder) / f"ann{suffix}"
        if suffix == ".jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            path.write_text(json.dumps(records, indent=1))
        yield path


@SETTINGS
@given(records=st.lists(mc_record(), min_size=1, max_size=4), suffix=SUFFIXES, data=st.data())
def test_valid_mc_records_round_trip(records, suffix, data):
    records = with_ids(records, data.draw(unique_ids(len(records), allow_default=True)))
    with written(records, suffix) as path:
        samples = read_mc_json(path)
    assert len(samples) == len(records)
    for index, (record, sample) in enumerate(zip(records, samples)):
        assert sample.id == (str(record["id"]) if "id" in record else f"ann-{index}")
        assert sample.video == os.path.abspath(path.parent / record["video"])
        assert (sample.question, sample.answer, sample.candidates) == (
            record["question"], record["answer"], record["candidates"])
        assert (sample.start, sample.end) == (record.get("start"), record.get("end"))
        assert sample.task == record.get("task", "ann")
        extra = {k: v for k, v in record.items() if k.startswith("x_")}
        assert sample.meta == {**extra, **record.get("meta", {})}


@SETTINGS
@given(records=st.lists(llava_record(), min_size=1, max_size=4), suffix=SUFFIXES, data=st.data())
def test_valid_llava_records_round_trip(records, suffix, data):
    records = with_ids(records, data.draw(unique_ids(len(records), allow_default=False)))
    with written(records, suffix) as path:
        samples = read_llava_json(path)
    for record, sample in zip(records, samples):
        human, gpt = record["conversations"][0]["value"], record["conversations"][1]["value"]
        for placeholder in ("<video>\n", "<image>\n"):
            human = human.removeprefix(placeholder)
        assert (sample.id, sample.question, sample.answer, sample.candidates) == (
            str(record["id"]), human.strip(), gpt.strip(), None)
        assert (sample.start, sample.end) == (record.get("start"), record.get("end"))
        later_turns = len(record["conversations"]) > 2
        assert sample.meta.get("conversations") == (record["conversations"] if later_turns else None)


@pytest.mark.parametrize("reader, required", [(read_mc_json, ["video", "question", "candidates", "answer"]),
                                              (read_llava_json, ["id", "video", "conversations"])])
@SETTINGS
@given(data=st.data(), suffix=SUFFIXES)
def test_a_record_without_a_required_key_is_rejected_naming_it(reader, required, data, suffix):
    strategy = mc_record() if reader is read_mc_json else llava_record()
    records = data.draw(st.lists(strategy, min_size=1, max_size=4))
    records = with_ids(records, data.draw(unique_ids(len(records), allow_default=reader is read_mc_json)))
    index = data.draw(st.integers(0, len(records) - 1))
    key = data.draw(st.sampled_from(required))
    records[index] = {k: v for k, v in records[index].items() if k != key}
    with written(records, suffix) as path, pytest.raises(AnnotationError) as info:
        reader(path)
    line = index + 1 if suffix == ".jsonl" else None
    assert (info.value.path, info.value.index, info.value.line, info.value.key) == (str(path), index, line, key)
    assert f"missing key {key!r}" in str(info.value) and str(path) in str(info.value)
