"""Annotation readers: MVBench-style multiple choice and LLaVA conversations, and their errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vlc.data.annotations import AnnotationError, Sample, read_llava_json, read_mc_json

MC_ITEMS = [
    {"video": "a.mp4", "question": "What happens?", "candidates": ["x", "y", "z"], "answer": "y"},
    {
        "video": "clips/b.webm",
        "question": "Then?",
        "candidates": ["p", "q"],
        "answer": "p",
        "start": 1.5,
        "end": 4,
        "id": 17,
        "task": "action_sequence",
        "meta": {"source": "star"},
        "accurate_start": True,
    },
]

LLAVA_ITEMS = [
    {
        "id": "v1",
        "video": "v1.mp4",
        "conversations": [
            {"from": "human", "value": "<video>\nDescribe the video."},
            {"from": "gpt", "value": "A red square flashes. "},
        ],
    },
    {
        "id": "v2",
        "video": "/abs/v2.mp4",
        "data_source": "academic",
        "conversations": [
            {"from": "human", "value": "What colour is it?\n<image>"},
            {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "And then?"},
            {"from": "gpt", "value": "Nothing."},
        ],
    },
]


def write_json(path: Path, items) -> Path:
    path.write_text(json.dumps(items))
    return path


def write_jsonl(path: Path, items) -> Path:
    path.write_text("\n".join(json.dumps(item) for item in items) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_read_mc(tmp_path, suffix):
    path = tmp_path / f"action_sequence{suffix}"
    (write_json if suffix == ".json" else write_jsonl)(path, MC_ITEMS)
    a, b = read_mc_json(path)
    assert a == Sample(
        id="action_sequence-0",
        video=str(tmp_path / "a.mp4"),
        question="What happens?",
        answer="y",
        candidates=["x", "y", "z"],
        task="action_sequence",
    )
    assert (b.id, b.start, b.end, b.task) == ("17", 1.5, 4.0, "action_sequence")
    assert b.video == str(tmp_path / "clips" / "b.webm") and os.path.isabs(b.video)
    assert b.meta == {"source": "star", "accurate_start": True}  # unknown keys are kept in meta

    roots = read_mc_json(path, video_root=tmp_path / "videos")
    assert roots[0].video == str(tmp_path / "videos" / "a.mp4")


def test_read_llava(tmp_path):
    first, second = read_llava_json(write_json(tmp_path / "llava.json", LLAVA_ITEMS), video_root=tmp_path / "vids")
    assert (first.id, first.question, first.answer) == ("v1", "Describe the video.", "A red square flashes.")
    assert first.candidates is None
    assert first.video == str(tmp_path / "vids" / "v1.mp4") and first.meta == {}
    assert (second.question, second.answer, second.video) == ("What colour is it?", "Blue.", "/abs/v2.mp4")
    assert second.meta["data_source"] == "academic" and len(second.meta["conversations"]) == 4


def mc_with(**changes):
    item = {"video": "a.mp4", "question": "q?", "candidates": ["x", "y"], "answer": "x"}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


@pytest.mark.parametrize(
    "bad, key, message",
    [
        (mc_with(video=...), "video", "missing key 'video'"),
        (mc_with(question=3), "question", "is int, expected str"),
        (mc_with(candidates="x,y"), "candidates", "is str, expected list"),
        (mc_with(candidates=["x"], answer="x"), "candidates", "1 candidates, expected 2 to 26"),
        (mc_with(candidates=["x", 2]), "candidates", "candidate 1 is int"),
        (mc_with(answer="z"), "answer", "answer 'z' is not one of the candidates"),
        (mc_with(start=5, end=2), "end", "end 2.0 <= start 5.0"),
        (mc_with(start="0:05"), "start", "expected a number of seconds"),
        (mc_with(meta=[1]), "meta", "is list, expected dict"),
        (mc_with(id=0), "id", "duplicate id '0', first used by item 0"),
    ],
)
def test_mc_errors_name_file_index_and_key(tmp_path, bad, key, message):
    path = write_json(tmp_path / "mc.json", [mc_with(id=0), bad])
    with pytest.raises(AnnotationError, match=message) as info:
        read_mc_json(path)
    text = str(info.value)
    assert text.startswith(f"{path}, item 1, key {key!r}: ")
    assert (info.value.path, info.value.index, info.value.key) == (str(path), 1, key)


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "mc.jsonl"
    good = json.dumps(mc_with())
    path.write_text(f"{good}\n\n{json.dumps(mc_with(answer='nope'))}\n")
    with pytest.raises(AnnotationError, match=r"mc.jsonl, item 1 \(line 3\), key 'answer'"):
        read_mc_json(path)
    path.write_text(f"{good}\n{{not json\n")
    with pytest.raises(AnnotationError, match=r"item 1 \(line 2\): invalid JSON"):
        read_mc_json(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(AnnotationError, match="annotation file not found"):
        read_mc_json(tmp_path / "nope.json")
    with pytest.raises(AnnotationError, match="top level is dict, expected a list"):
        read_mc_json(write_json(tmp_path / "d.json", {"video": "a.mp4"}))
    (tmp_path / "broken.json").write_text('[{"video": "a.mp4",\n  "question": }]')
    with pytest.raises(AnnotationError, match=r"broken.json \(line 2\): invalid JSON"):
        read_mc_json(tmp_path / "broken.json")
    with pytest.raises(AnnotationError, match=r"item 0: item is list, expected an object"):
        read_mc_json(write_json(tmp_path / "l.json", [[1, 2]]))


def llava_with(**changes):
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    item = {"id": "a", "video": "a.mp4", "conversations": turns}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


@pytest.mark.parametrize(
    "bad, key, message",
    [
        (llava_with(id=...), "id", "missing key 'id'"),
        (llava_with(id="first"), "id", "duplicate id 'first'"),
        (llava_with(conversations=[]), "conversations", "empty conversation"),
        (llava_with(conversations="hi"), "conversations", "is str, expected list"),
        (llava_with(conversations=[{"from": "human"}]), "conversations", "turn 0 is"),
        (
            llava_with(conversations=[{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]),
            "conversations",
            r"no human turn followed by a gpt turn \(roles: \['gpt', 'human'\]\)",
        ),
        (llava_with(video=None), "video", "missing key 'video'"),
    ],
)
def test_llava_errors_name_file_index_and_key(tmp_path, bad, key, message):
    path = write_json(tmp_path / "llava.json", [llava_with(id="first"), bad])
    with pytest.raises(AnnotationError, match=message) as info:
        read_llava_json(path)
    assert str(info.value).startswith(f"{path}, item 1, key {key!r}: ")
