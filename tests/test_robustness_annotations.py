"""Bad annotation files are rejected when the data is set up, before training, naming the file, the
item (and line) and the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlc.data.annotations import AnnotationError, read_llava_json, read_mc_json
from vlc.data.datamodule import VideoDataModule

GOOD_MC = {"video": "a.mp4", "question": "q?", "candidates": ["x", "y"], "answer": "x"}
GOOD_LLAVA = {"id": "a", "video": "a.mp4",
              "conversations": [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "a"}]}


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = write(tmp_path / "mc.json", '[\n  {"video": "a.mp4",\n   "question": }\n]')
    with pytest.raises(AnnotationError) as info:
        read_mc_json(path)
    assert str(info.value) == f"{path} (line 3): invalid JSON (Expecting value, column 16)"
    assert info.value.line == 3


def test_jsonl_syntax_error_names_item_line_and_column(tmp_path):
    path = write(tmp_path / "mc.jsonl", json.dumps(GOOD_MC) + "\n\n" + '{"video": "b.mp4", question: 1}\n')
    with pytest.raises(AnnotationError) as info:
        read_mc_json(path)
    assert str(info.value) == (
        f"{path}, item 1 (line 3): invalid JSON (Expecting property name enclosed in double quotes, column 20)"
    )


def test_json_lines_in_a_json_file_gets_a_hint(tmp_path):
    path = write(tmp_path / "mc.json", json.dumps(GOOD_MC) + "\n" + json.dumps(GOOD_MC) + "\n")
    with pytest.raises(AnnotationError, match=r"\(line 2\): invalid JSON \(Extra data, column 1\); one object per "
                                              r"line is JSON Lines: name the file .jsonl"):
        read_mc_json(path)


def test_byte_order_mark_is_accepted_and_binary_is_named(tmp_path):
    path = write(tmp_path / "bom.json", b"\xef\xbb\xbf" + json.dumps([GOOD_MC]).encode())
    assert read_mc_json(path)[0].answer == "x"
    binary = write(tmp_path / "video.json", b"\x00\x00\x00\x18ftypmp42\xff\xfe")
    with pytest.raises(AnnotationError, match=re.escape(f"{binary}: not UTF-8 text (byte 12: invalid start byte)")):
        read_mc_json(binary)


@pytest.mark.parametrize("text, suffix", [("[]", ".json"), ("\n\n", ".jsonl"), ("", ".jsonl")])
def test_empty_file_is_rejected(tmp_path, text, suffix):
    path = write(tmp_path / f"empty{suffix}", text)
    with pytest.raises(AnnotationError, match=re.escape(f"{path}: no items")):
        read_mc_json(path)


def test_a_directory_is_not_an_annotation_file(tmp_path):
    with pytest.raises(AnnotationError, match="not a file"):
        read_llava_json(tmp_path)


@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"start": float("nan")}, "start", "value nan, expected a number of seconds >= 0 or null"),
        ({"end": float("inf")}, "end", "value inf, expected a number of seconds >= 0 or null"),
        ({"start": -1}, "start", "value -1, expected a number of seconds >= 0 or null"),
        ({"candidates": ["x", "y", "x"]}, "candidates", "candidate 2 'x' repeats candidate 0"),
        ({"question": "  "}, "question", "empty string '  ', expected text"),
        ({"video": ""}, "video", "empty string '', expected text"),
        ({"answer": ""}, "answer", "empty string '', expected text"),
        ({"answer": "X"}, "answer", "answer 'X' is not one of the candidates ['x', 'y']"),
        ({"candidates": None}, "candidates", "missing key 'candidates'"),
        ({"id": True}, "id", "value True is not a usable id"),
        ({"id": 1.5}, "id", "value 1.5 is not a usable id"),
    ],
)
def test_mc_item_errors(tmp_path, change, key, message):
    # NaN and Infinity are what Python's json writes for float('nan') / float('inf'); readers accept them.
    path = write(tmp_path / "mc.jsonl", json.dumps(GOOD_MC) + "\n" + json.dumps({**GOOD_MC, **change}) + "\n")
    with pytest.raises(AnnotationError) as info:
        read_mc_json(path)
    assert str(info.value).startswith(f"{path}, item 1 (line 2), key {key!r}: {message}")
    assert (info.value.index, info.value.line, info.value.key) == (1, 2, key)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]},
         "turn 1 (gpt) is empty: the answer to learn or score against is missing"),
        ({"conversations": []}, "empty conversation, expected a human turn and a gpt turn"),
        ({"conversations": [{"from": "human", "value": "q"}]}, "no human turn followed by a gpt turn"),
        ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]}, "turn 0 is"),
    ],
)
def test_llava_conversation_errors(tmp_path, change, message):
    path = write(tmp_path / "llava.json", json.dumps([{**GOOD_LLAVA, "id": "first"}, {**GOOD_LLAVA, **change}]))
    with pytest.raises(AnnotationError, match=re.escape(f"{path}, item 1, key 'conversations': {message}")):
        read_llava_json(path)


def test_duplicate_ids_name_both_items(tmp_path):
    items = [{**GOOD_LLAVA, "id": i} for i in ("a", "b", "c", "b")]
    path = write(tmp_path / "llava.json", json.dumps(items))
    expected = f"{path}, item 3, key 'id': duplicate id 'b', first used by item 1"
    with pytest.raises(AnnotationError, match=re.escape(expected)):
        read_llava_json(path)
    # An explicit id that collides with another item's default id (<file stem>-<index>) is caught too.
    path = write(tmp_path / "mc.json", json.dumps([GOOD_MC, {**GOOD_MC, "id": "mc-0"}]))
    with pytest.raises(AnnotationError, match="duplicate id 'mc-0', first used by item 0"):
        read_mc_json(path)


def test_datamodule_setup_rejects_bad_annotations_before_touching_videos(tmp_path):
    """setup() runs before the first training step: a bad val file stops the run there, naming it,
    even though the train file is fine and no video exists at all."""
    write(tmp_path / "train.json", json.dumps([GOOD_MC]))
    write(tmp_path / "val.jsonl", json.dumps(GOOD_MC) + "\n" + json.dumps({**GOOD_MC, "answer": "z"}) + "\n")
    dm = VideoDataModule(source="mc_json", root=str(tmp_path), train_file="train.json", val_file="val.jsonl",
                         num_frames=2)
    with pytest.raises(AnnotationError, match=re.escape(f"{tmp_path / 'val.jsonl'}, item 1 (line 2), key 'answer'")):
        dm.setup("fit")
    assert dm.datasets == {}
