"""Annotation readers: MVBench-style multiple choice and LLaVA-style conversations → ``Sample``.

Both readers validate every item up front and raise ``AnnotationError`` naming the file, the
item's index (and line, for JSON Lines) and the key at fault, so a bad annotation stops a run
before training starts rather than hours into it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    id: str
    video: str  # absolute path
    question: str
    answer: str
    candidates: list[str] | None = None  # multiple-choice options; None for open-ended answers
    start: float | None = None  # seconds; sampling is restricted to [start, end] when given
    end: float | None = None
    task: str = ""
    meta: dict = field(default_factory=dict)


class AnnotationError(ValueError):
    """A malformed annotation file or item."""

    def __init__(
        self,
        path: str | os.PathLike,
        message: str,
        index: int | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        where = str(path)
        if index is not None:
            where += f", item {index}"
        if line is not None:
            where += f" (line {line})"
        if key is not None:
            where += f", key {key!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.index, self.line, self.key = str(path), index, line, key


# Placeholders that LLaVA-style prompts put where the visual tokens go; vlc places the visual
# span itself, so they are removed from the question text.
_PLACEHOLDER = re.compile(r"\s*<(video|image)>\s*")

_MC_KEYS = {"id", "video", "question", "candidates", "answer", "start", "end", "task", "meta"}
MAX_CANDIDATES = 26  # options are lettered A-Z (prompt.answer_style=letter)
MAX_TEXT_CHARS = 8000  # a question or answer longer than this is a data error, not a prompt (data.max_text_chars)
_LLAVA_KEYS = {"id", "video", "conversations", "start", "end", "task", "meta"}


def read_mc_json(path: str | os.PathLike, video_root: str | os.PathLike | None = None,
                 max_text_chars: int = MAX_TEXT_CHARS, confine: bool = False) -> list[Sample]:
    """Multiple-choice items (MVBench layout) from a JSON list or a JSON Lines file.

    Each item: ``video``, ``question``, ``candidates`` (list of str), ``answer`` (one of the
    candidates); optional ``start``/``end`` (seconds), ``id`` (default ``<file stem>-<index>``),
    ``task`` (default the file stem, as MVBench keeps one task per file) and ``meta`` (dict).
    Other keys are kept in ``meta``. Relative video paths are taken from ``video_root``, by
    default the annotation file's folder; ``confine`` refuses a path that leads outside it. At
    most ``MAX_CANDIDATES`` options, none empty or a repeat of another up to case and spaces, and
    no text longer than ``max_text_chars``.
    """
    path = Path(path)
    root = _video_root(path, video_root)
    samples: list[Sample] = []
    first_use: dict[str, int] = {}  # id → index of the item that used it first
    for index, line, item in _read_items(path):
        where = dict(path=path, index=index, line=line)
        video = _get(item, "video", str, **where)
        question = _text(_get(item, "question", str, **where), "question", max_text_chars, **where)
        candidates = _get(item, "candidates", list, **where)
        if not 2 <= len(candidates) <= MAX_CANDIDATES:
            message = (f"{len(candidates)} candidates, expected 2 to {MAX_CANDIDATES} "
                       f"(options are lettered A-Z)")
            raise AnnotationError(path, message, index, line, "candidates")
        seen: dict[str, int] = {}
        for k, option in enumerate(candidates):
            if not isinstance(option, str):
                message = f"candidate {k} is {type(option).__name__} {option!r}, expected str"
                raise AnnotationError(path, message, index, line, "candidates")
            if not option.strip():
                raise AnnotationError(path, f"candidate {k} is empty {option!r}, expected text", index, line,
                                      "candidates")
            _text(option, f"candidate {k}", max_text_chars, **where)
            # The answer is scored by its position among the candidates: a repeat (up to case and
            # spaces, which the model cannot tell apart either) makes it ambiguous.
            key = " ".join(option.lower().split())
            if key in seen:
                message = f"candidate {k} {option!r} repeats candidate {seen[key]} {candidates[seen[key]]!r}"
                raise AnnotationError(path, message, index, line, "candidates")
            seen[key] = k
        answer = _get(item, "answer", str, **where)
        if answer not in candidates:
            message = f"answer {answer!r} is not one of the candidates {candidates}"
            raise AnnotationError(path, message, index, line, "answer")
        _append_unique(
            samples,
            first_use,
            Sample(
                id=_id(item, f"{path.stem}-{index}", **where),
                video=_resolve(root, video, confine, **where),
                question=question,
                answer=answer,
                candidates=list(candidates),
                task=_get(item, "task", str, required=False, **where) or path.stem,
                meta=_meta(item, _MC_KEYS, **where),
                **_window(item, **where),
            ),
            **where,
        )
    return samples


def read_llava_json(path: str | os.PathLike, video_root: str | os.PathLike | None = None,
                    max_text_chars: int = MAX_TEXT_CHARS, confine: bool = False) -> list[Sample]:
    """Open-ended items (LLaVA layout) from a JSON list or a JSON Lines file.

    Each item: ``id``, ``video`` and ``conversations``, a list of ``{"from", "value"}`` turns. The
    first human turn followed by a gpt turn becomes question / answer; the ``<video>`` (or
    ``<image>``) placeholder is stripped from the question. Later turns are kept in
    ``meta["conversations"]`` when there are any. ``candidates`` is None.
    """
    path = Path(path)
    root = _video_root(path, video_root)
    samples: list[Sample] = []
    first_use: dict[str, int] = {}  # id → index of the item that used it first
    for index, line, item in _read_items(path):
        where = dict(path=path, index=index, line=line)
        if "id" not in item:
            raise AnnotationError(path, "missing key 'id' (LLaVA items need an id)", index, line, "id")
        video = _get(item, "video", str, **where)
        turns = _get(item, "conversations", list, **where)
        if not turns:
            message = "empty conversation, expected a human turn and a gpt turn"
            raise AnnotationError(path, message, index, line, "conversations")
        for k, turn in enumerate(turns):
            if not (isinstance(turn, dict) and all(isinstance(turn.get(f), str) for f in ("from", "value"))):
                message = f"turn {k} is {turn!r}, expected {{'from': str, 'value': str}}"
                raise AnnotationError(path, message, index, line, "conversations")
        pair = next(
            (k for k in range(len(turns) - 1) if turns[k]["from"] == "human" and turns[k + 1]["from"] == "gpt"), None
        )
        if pair is None:
            roles = [t["from"] for t in turns]
            message = f"no human turn followed by a gpt turn (roles: {roles})"
            raise AnnotationError(path, message, index, line, "conversations")
        question = _PLACEHOLDER.sub(" ", turns[pair]["value"]).strip()
        if not question:
            message = f"turn {pair} (human) has no question besides the video placeholder"
            raise AnnotationError(path, message, index, line, "conversations")
        if not turns[pair + 1]["value"].strip():
            message = f"turn {pair + 1} (gpt) is empty: the answer to learn or score against is missing"
            raise AnnotationError(path, message, index, line, "conversations")
        _text(question, f"turn {pair} (human)", max_text_chars, **where)
        _text(turns[pair + 1]["value"], f"turn {pair + 1} (gpt)", max_text_chars, **where)
        meta = _meta(item, _LLAVA_KEYS, **where)
        if len(turns) > pair + 2:
            meta["conversations"] = turns
        _append_unique(
            samples,
            first_use,
            Sample(
                id=_id(item, None, **where),
                video=_resolve(root, video, confine, **where),
                question=question,
                answer=turns[pair + 1]["value"].strip(),
                candidates=None,
                task=_get(item, "task", str, required=False, **where) or path.stem,
                meta=meta,
                **_window(item, **where),
            ),
            **where,
        )
    return samples


def _read_items(path: Path) -> list[tuple[int, int | None, dict[str, Any]]]:
    """``(index, line or None, item)`` for each object of a JSON list or JSON Lines file."""
    if not path.is_file():
        raise AnnotationError(path, "annotation file not found" if not path.exists() else "not a file")
    try:
        # utf-8-sig: a byte-order mark (some editors on Windows write one) is not an error.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise AnnotationError(path, f"not UTF-8 text (byte {error.start}: {error.reason}); expected JSON") from error
    items: list[tuple[int, int | None, Any]] = []
    if path.suffix == ".jsonl":
        for lineno, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                items.append((len(items), lineno, json.loads(raw)))
            except RecursionError:
                raise AnnotationError(path, "JSON nested too deeply to read", len(items), lineno) from None
            except json.JSONDecodeError as error:
                message = f"invalid JSON ({error.msg}, column {error.colno})"
                raise AnnotationError(path, message, len(items), lineno) from error
    else:
        try:
            data = json.loads(text)
        except RecursionError:
            raise AnnotationError(path, "JSON nested too deeply to read (an item holds lists or objects "
                                        "thousands of levels deep); expected a list of flat objects") from None
        except json.JSONDecodeError as error:
            hint = "; one object per line is JSON Lines: name the file .jsonl" if error.msg == "Extra data" else ""
            message = f"invalid JSON ({error.msg}, column {error.colno}){hint}"
            raise AnnotationError(path, message, line=error.lineno) from error
        if not isinstance(data, list):
            raise AnnotationError(path, f"top level is {type(data).__name__}, expected a list of objects")
        items = [(i, None, item) for i, item in enumerate(data)]
    if not items:
        raise AnnotationError(path, "no items: the file holds an empty list or only blank lines")
    for index, line, item in items:
        if not isinstance(item, dict):
            raise AnnotationError(path, f"item is {type(item).__name__}, expected an object", index, line)
    return items


def _get(item: dict, key: str, kind: type, path: Path, index: int, line: int | None, required: bool = True) -> Any:
    if key not in item or item[key] is None:
        if required:
            raise AnnotationError(path, f"missing key {key!r}", index, line, key)
        return None
    value = item[key]
    if not isinstance(value, kind):
        message = f"value {value!r} is {type(value).__name__}, expected {kind.__name__}"
        raise AnnotationError(path, message, index, line, key)
    if required and kind is str and not value.strip():
        raise AnnotationError(path, f"empty string {value!r}, expected text", index, line, key)
    return value


def _id(item: dict, default: str | None, path: Path, index: int, line: int | None) -> str:
    if "id" not in item and default is not None:
        return default
    value = item["id"]
    # Integer ids are common (LLaVA data mixes both); bools are never meant as ids.
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        message = f"value {value!r} is not a usable id, expected a non-empty str or an int"
        raise AnnotationError(path, message, index, line, "id")
    return str(value)


def _window(item: dict, path: Path, index: int, line: int | None) -> dict[str, float | None]:
    window = {}
    for key in ("start", "end"):
        value = item.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
        ):
            raise AnnotationError(path, f"value {value!r}, expected a number of seconds >= 0 or null", index, line, key)
        window[key] = None if value is None else float(value)
    if window["start"] is not None and window["end"] is not None and window["end"] <= window["start"]:
        raise AnnotationError(path, f"end {window['end']} <= start {window['start']}", index, line, "end")
    return window


def _meta(item: dict, known: set[str], path: Path, index: int, line: int | None) -> dict[str, Any]:
    meta = _get(item, "meta", dict, required=False, path=path, index=index, line=line)
    extra = {k: v for k, v in item.items() if k not in known}
    return {**extra, **(meta or {})}


def _text(value: str, what: str, limit: int, path: Path, index: int, line: int | None) -> str:
    if len(value) > limit:
        message = (f"{what} is {len(value)} characters, over data.max_text_chars={limit}: a prompt that long is "
                   f"a data error (raise the limit if it is not)")
        raise AnnotationError(path, message, index, line)
    return value


def _resolve(root: Path, video: str, confine: bool = False, path: Path | None = None, index: int | None = None,
             line: int | None = None) -> str:
    resolved = os.path.abspath(os.path.join(root, os.path.expanduser(video)))
    if confine:
        real, base = os.path.realpath(resolved), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            message = (f"video {video!r} resolves to {real}, outside the video root {base} "
                       f"(data.confine_videos=true)")
            raise AnnotationError(path or root, message, index, line, "video")
    return resolved


def _video_root(path: Path, video_root: str | os.PathLike | None) -> Path:
    return Path(video_root) if video_root is not None else path.parent


def _append_unique(
    samples: list[Sample], first_use: dict[str, int], sample: Sample, path: Path, index: int, line: int | None
) -> None:
    # Ids key predictions and metrics, so a repeated id would silently merge two samples' results.
    if sample.id in first_use:
        message = f"duplicate id {sample.id!r}, first used by item {first_use[sample.id]}"
        raise AnnotationError(path, message, index, line, "id")
    first_use[sample.id] = index
    samples.append(sample)
