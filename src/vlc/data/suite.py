"""The synthetic long-video suite: several tasks in one dataset, and a held-out split.

Each task of the suite is a named entry, one of ``vlc.data.synthetic``'s task families with its own
parameters, e.g. ``needle_small: {family: needle, needle_patch: 8}`` (the coloured shape fills one
8-pixel patch of a 32 px frame: one token of the tiny ViT) or ``order3: {family: order,
num_events: 3}``. Every split holds the same number of samples of every task, and each sample's
``task`` is its entry's name, so one training run reports ``val/acc_<task>`` per task.

Splits:

- ``train`` and ``val``: haystacks of the ``textures`` families and event shapes from ``shapes``;
- ``heldout``: ``heldout_textures`` and ``heldout_shapes``, which must share nothing with the
  first two, so its accuracy measures generalisation, not memorised looks. The data module serves
  it as the test split (``data=suite``, ``test=true``).

Difficulty grows with ``num_frames`` (the haystack: 64 … 1024) and with the detail the events
hold. Accuracy against length comes from the same suite at other lengths with only a val split
(``num_frames=1024, num_train=0, num_heldout=0``): its samples are paired with the training-length
ones (index i draws from the same seed), so the lengths differ and little else does.

Every sample's ``meta`` records ``chance``: 1 / its number of options, the accuracy of a guess;
``suite.json`` beside the splits lists each task's family, parameters, question and chance, and
each split's mean chance, so a table can print chance beside every column.

Generation is seeded per sample by (seed, split, task name, index): adding a task, or more
samples, leaves the others as they were. Like ``ensure_synthetic``, the suite is generated once
under a directory named by a hash of its parameters and published by an atomic rename.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlc.data.synthetic import (
    ALL_SHAPES,
    GENERATOR_VERSION,
    TASK_PARAMS,
    TASKS,
    TEXTURES,
    _build_atomically,
    _check_size,
    _mc_item,
    _names,
    _params_hash,
    _write_json,
    make_video_frames,
    sample_rng,
    write_mp4,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "heldout")
# Set per split by the suite (textures, shapes), so a task entry may not fix them.
SPLIT_LOOKS = ("textures", "shapes")


def chance(candidates: list[str]) -> float:
    """The accuracy of a uniform guess among ``candidates``."""
    return round(1.0 / len(candidates), 6)


def suite_plan(
    tasks: Mapping[str, Mapping[str, Any]],
    num_frames: int = 64,
    num_train: int = 500,
    num_val: int = 50,
    num_heldout: int = 50,
    seed: int = 0,
    textures: list[str] = ("blocks", "stripes"),
    shapes: list[str] = ("square", "circle"),
    heldout_textures: list[str] = ("checker", "rings"),
    heldout_shapes: list[str] = ("diamond", "cross"),
) -> list[dict[str, Any]]:
    """Every sample the suite will make, without making it: one dict per sample with ``split``,
    ``task`` (the entry's name), ``family``, ``index``, ``id``, ``video`` (relative path),
    ``num_frames``, ``seed`` and ``params`` (``make_video_frames``'s task parameters, the split's
    textures and shapes included). Samples are interleaved task by task within a split."""
    entries = _check_tasks(tasks)
    looks = _split_looks(textures, shapes, heldout_textures, heldout_shapes)
    counts = {"train": int(num_train), "val": int(num_val), "heldout": int(num_heldout)}
    if int(num_frames) < 1 or min(counts.values()) < 0:
        raise ValueError(f"suite num_frames={num_frames} (>= 1) and samples per task {counts} (>= 0)")
    plan = []
    for split in SPLITS:
        for i in range(counts[split]):
            for name, (family, params) in entries.items():
                plan.append(dict(
                    split=split, task=name, family=family, index=i, id=f"{name}-{split}-{i:06d}",
                    video=f"videos/{split}/{name}/{i:06d}.mp4", num_frames=int(num_frames), seed=int(seed),
                    params={**params, **looks[split]},
                ))
    return plan


def make_planned_sample(entry: dict[str, Any], frame_size: int, fps: float):
    """Generate one sample of ``suite_plan``: ``make_video_frames``'s (frames, question,
    candidates, answer, meta), the task's errors prefixed with its name."""
    rng = sample_rng(entry["seed"], f"{entry['split']}/{entry['task']}", entry["index"])
    try:
        return make_video_frames(entry["family"], rng, entry["num_frames"], frame_size, fps, **entry["params"])
    except (ValueError, TypeError) as error:
        raise type(error)(f"suite task {entry['task']!r} (family {entry['family']}): {error}") from error


def suite_dir(root: str | os.PathLike, tasks: Mapping[str, Mapping[str, Any]], **options: Any) -> Path:
    """Where ``ensure_suite`` keeps the suite with these parameters (whether made yet or not)."""
    return Path(root) / f"suite-{_params_hash(_suite_params(tasks, **options))}"


def ensure_suite(
    root: str | os.PathLike,
    tasks: Mapping[str, Mapping[str, Any]],
    num_frames: int = 64,
    frame_size: int = 32,
    fps: float = 4.0,
    num_train: int = 500,
    num_val: int = 50,
    num_heldout: int = 50,
    seed: int = 0,
    textures: list[str] = ("blocks", "stripes"),
    shapes: list[str] = ("square", "circle"),
    heldout_textures: list[str] = ("checker", "rings"),
    heldout_shapes: list[str] = ("diamond", "cross"),
) -> Path:
    """Generate the suite into ``root/suite-<hash of params>/`` unless it is already there.

    ``tasks`` maps a task name to ``{family: <a vlc.data.synthetic task>, **its parameters}``;
    ``num_train`` / ``num_val`` / ``num_heldout`` are samples *per task*. The directory holds
    ``<split>.json`` for every split with samples (``read_mc_json`` format), ``suite.json`` (tasks,
    chance, what each split shows), ``params.json`` and ``videos/<split>/<task>/<index>.mp4``.
    """
    options = dict(num_frames=num_frames, frame_size=frame_size, fps=fps, num_train=num_train, num_val=num_val,
                   num_heldout=num_heldout, seed=seed, textures=textures, shapes=shapes,
                   heldout_textures=heldout_textures, heldout_shapes=heldout_shapes)
    params = _suite_params(tasks, **options)
    final = Path(root) / f"suite-{_params_hash(params)}"
    if final.is_dir():
        return final
    plan = suite_plan(tasks, **{k: v for k, v in options.items() if k not in ("frame_size", "fps")})

    def build(tmp: Path) -> None:
        by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
        for entry in tqdm(plan, desc="synthetic suite", unit="video"):
            frames, question, candidates, answer, meta = make_planned_sample(entry, int(frame_size), float(fps))
            write_mp4(tmp / entry["video"], frames, fps)
            meta["event_times"] = [round(j / fps, 6) for j in meta["event_indices"]]
            meta.update(family=entry["family"], chance=chance(candidates))
            by_split[entry["split"]].append(
                _mc_item(entry["id"], entry["video"], question, candidates, answer, entry["task"], meta)
            )
        for split, samples in by_split.items():
            if samples:  # an empty split has no file (an annotation file must hold samples)
                _write_json(tmp / f"{split}.json", samples)
        _write_json(tmp / "suite.json", [_summary(params, by_split)])

    log.info("generating the synthetic suite (%d videos) into %s", len(plan), final)
    _build_atomically(final, params, build)
    return final


def read_suite_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """``suite.json`` of a generated suite: ``{"tasks": {name: {family, params, question, chance}},
    "splits": {split: {samples, textures, shapes, chance}}}``."""
    import json

    return json.loads((Path(folder) / "suite.json").read_text())[0]


def _summary(params: dict[str, Any], by_split: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for samples in by_split.values():
        for s in samples:
            entry = {k: v for k, v in params["tasks"][s["task"]].items() if k != "family"}
            tasks.setdefault(s["task"], {"family": s["meta"]["family"], "params": entry,
                                         "question": s["question"], "chances": Counter()})
            tasks[s["task"]]["chances"][s["meta"]["chance"]] += 1
    for info in tasks.values():  # every task has one number of options; the mean covers any that would not
        chances = info.pop("chances")
        info["chance"] = round(sum(c * n for c, n in chances.items()) / sum(chances.values()), 6)
    splits = {}
    for split, samples in by_split.items():
        prefix = "heldout_" if split == "heldout" else ""
        looks = {"textures": params[f"{prefix}textures"], "shapes": params[f"{prefix}shapes"]}
        mean = sum(s["meta"]["chance"] for s in samples) / len(samples) if samples else None
        splits[split] = {"samples": len(samples), **looks, "chance": None if mean is None else round(mean, 6)}
    return {"tasks": tasks, "splits": splits, "num_frames": params["num_frames"]}


def _check_tasks(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{name: (family, params)}`` from the config's task entries, every key checked."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"suite tasks={tasks!r}: expected a mapping of task name -> {{family: ..., parameters}}")
    entries = {}
    for name, entry in tasks.items():
        if not isinstance(entry, Mapping) or "family" not in entry:
            raise ValueError(f"suite task {name!r}: {entry!r} has no family; expected {{family: one of {TASKS}, ...}}")
        family = entry["family"]
        if family not in TASKS:
            raise ValueError(f"suite task {name!r}: family={family!r}, expected one of {TASKS}")
        params = {k: _plain(v) for k, v in entry.items() if k != "family"}
        allowed = TASK_PARAMS[family] - set(SPLIT_LOOKS)
        unknown = sorted(set(params) - allowed)
        if unknown:
            hint = " (set per split by the suite's textures/shapes)" if set(unknown) & set(SPLIT_LOOKS) else ""
            raise ValueError(f"suite task {name!r} (family {family}): unknown parameters {unknown}{hint}; "
                             f"allowed: {sorted(allowed)}")
        entries[str(name)] = (family, params)
    return entries


def _split_looks(textures, shapes, heldout_textures, heldout_shapes) -> dict[str, dict[str, list[str]]]:
    seen = {"textures": list(_names("textures", textures, TEXTURES)),
            "shapes": list(_names("shapes", shapes, ALL_SHAPES))}
    held = {"textures": list(_names("heldout_textures", heldout_textures, TEXTURES)),
            "shapes": list(_names("heldout_shapes", heldout_shapes, ALL_SHAPES))}
    for key in SPLIT_LOOKS:
        shared = sorted(set(seen[key]) & set(held[key]))
        if shared:
            raise ValueError(f"suite heldout_{key}={held[key]} shares {shared} with {key}={seen[key]}; the held-out "
                             f"split must show {key} training never sees")
    return {"train": seen, "val": seen, "heldout": held}


def _suite_params(tasks, num_frames=64, frame_size=32, fps=4.0, num_train=500, num_val=50, num_heldout=50, seed=0,
                  textures=("blocks", "stripes"), shapes=("square", "circle"), heldout_textures=("checker", "rings"),
                  heldout_shapes=("diamond", "cross")) -> dict[str, Any]:
    entries = _check_tasks(tasks)
    _check_size(int(frame_size))
    if not float(fps) > 0:
        raise ValueError(f"suite fps={fps}, expected > 0")
    looks = _split_looks(textures, shapes, heldout_textures, heldout_shapes)
    if int(num_frames) < 1 or min(int(num_train), int(num_val), int(num_heldout)) < 0:
        raise ValueError(f"suite num_frames={num_frames} (>= 1), num_train={num_train}, num_val={num_val}, "
                         f"num_heldout={num_heldout} (>= 0)")
    return {
        "kind": "suite",
        "tasks": {name: {"family": family, **params} for name, (family, params) in entries.items()},
        "num_frames": int(num_frames),
        "frame_size": int(frame_size),
        "fps": float(fps),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_heldout": int(num_heldout),
        "seed": int(seed),
        **looks["train"],
        "heldout_textures": looks["heldout"]["textures"],
        "heldout_shapes": looks["heldout"]["shapes"],
        "version": GENERATOR_VERSION,
    }


def _plain(value: Any) -> Any:
    """A config value (OmegaConf lists and mappings included) as plain JSON-able Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):  # lists, tuples, OmegaConf ListConfig
        return [_plain(v) for v in value]
    return value
