"""The synthetic benchmark: task content, reproducibility, caching and atomic publication."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vlc.data import synthetic
from vlc.data.annotations import read_mc_json
from vlc.data.synthetic import (
    COLORS,
    PALETTE,
    ensure_needle_grid,
    ensure_synthetic,
    make_video_frames,
    sample_rng,
    synthetic_dir,
)
from vlc.data.video import read_video, video_info

TINY = dict(num_frames=8, frame_size=16, fps=4.0, num_train=4, num_val=2)


def is_grey(frame: np.ndarray) -> bool:
    return bool(np.all(frame[..., 0] == frame[..., 1]) and np.all(frame[..., 1] == frame[..., 2]))


def colored_pixels(frame: np.ndarray, color: str) -> int:
    return int(np.all(frame == np.array(PALETTE[color], np.uint8), axis=-1).sum())


# ---------------------------------------------------------------------------------------------
# Frames and questions


def test_needle_one_coloured_frame_in_a_grey_haystack():
    frames, question, candidates, answer, meta = make_video_frames(
        "needle", sample_rng(0, "t", 0), 20, 32, depth=0.37, shape_size=(1 / 3, 0.5)
    )
    assert frames.shape == (20, 32, 32, 3) and frames.dtype == np.uint8
    assert question == "What color is the shape that appears briefly in the video?"
    assert meta["needle_index"] == int(20 * 0.37) == 7 and meta["event_indices"] == [7]
    assert len(candidates) == 4 == len(set(candidates)) and answer in candidates and answer == meta["color"]
    for t in range(20):
        assert is_grey(frames[t]) == (t != 7)
    y0, x0, y1, x1 = meta["box"]
    assert round(32 / 3) <= y1 - y0 == x1 - x0 <= 16
    filled = colored_pixels(frames[7], answer)
    assert filled == (y1 - y0) ** 2 if meta["shape"] == "square" else 0.6 * (y1 - y0) ** 2 < filled < (y1 - y0) ** 2


def test_default_needle_is_a_full_frame_flash():
    frames, _, _, answer, meta = make_video_frames("needle", sample_rng(0, "t", 0), 20, 32, depth=0.5)
    assert meta["box"] == [0, 0, 32, 32] and meta["needle_index"] == 10
    filled = colored_pixels(frames[10], answer)
    assert filled == 32 * 32 if meta["shape"] == "square" else 0.75 * 32 * 32 < filled < 32 * 32
    assert all(is_grey(frames[t]) for t in range(20) if t != 10)


def test_needle_clip_and_last_depth():
    frames, _, _, answer, meta = make_video_frames("needle", sample_rng(0, "t", 1), 16, 16, depth=0.99, needle_frames=3)
    # int(16 * 0.99) = 15 would run past the end: the clip moves back to frames 13, 14, 15.
    assert meta["needle_index"] == 13 and meta["event_indices"] == [13, 14, 15]
    counts = [colored_pixels(frames[t], answer) for t in range(16)]
    assert counts[:13] == [0] * 13 and counts[13] == counts[14] == counts[15] > 0


def test_order_two_colours_first_one_is_the_answer():
    for i in range(20):
        frames, question, candidates, answer, meta = make_video_frames("order", sample_rng(0, "o", i), 12, 16)
        first, second = meta["colors"]
        assert question == "Which color appeared first?" and answer == first != second
        assert {first, second} <= set(candidates) and len(set(candidates)) == 4
        a, b = meta["starts"]
        assert 0 <= a and a + 1 < b < 12  # separate events, at least one haystack frame apart
        assert colored_pixels(frames[a], first) > 0 and colored_pixels(frames[b], second) > 0
        assert sum(not is_grey(f) for f in frames) == 2
    # Clips of 3 frames in 7: the only layout with a haystack frame between them.
    frames, _, _, _, meta = make_video_frames("order", sample_rng(0, "o", 99), 7, 16, needle_frames=3)
    assert meta["starts"] == [0, 4] and meta["event_indices"] == [0, 1, 2, 4, 5, 6]
    assert [is_grey(f) for f in frames] == [False, False, False, True, False, False, False]
    with pytest.raises(ValueError, match=r"order task needs num_frames >= num_events\*needle_frames\+.* = 7 .*, got 6"):
        make_video_frames("order", sample_rng(0, "o", 99), 6, 16, needle_frames=3)


def test_count_non_adjacent_red_flashes():
    seen = Counter()
    for i in range(40):
        frames, question, candidates, answer, meta = make_video_frames("count", sample_rng(0, "c", i), 8, 16)
        k = meta["count"]
        seen[k] += 1
        assert question == "How many times does the red shape appear?"
        assert candidates == ["1", "2", "3", "4"] and answer == str(k)
        idx = meta["event_indices"]
        assert len(idx) == k and np.all(np.diff(idx) >= 2)  # never adjacent, even with 4 in 8 frames
        assert [t for t in range(8) if colored_pixels(frames[t], "red") > 0] == idx
        assert all(is_grey(frames[t]) for t in range(8) if t not in idx)
    assert set(seen) == {1, 2, 3, 4}


def test_answers_and_answer_slots_are_balanced():
    colours, slots = Counter(), Counter()
    for i in range(400):
        _, _, candidates, answer, _ = make_video_frames("needle", sample_rng(3, "b", i), 2, 8)
        colours[answer] += 1
        slots[candidates.index(answer)] += 1
    assert set(colours) == set(COLORS) and min(colours.values()) > 400 / 8 * 0.5
    assert set(slots) == {0, 1, 2, 3} and min(slots.values()) > 400 / 4 * 0.7


def test_sample_depends_only_on_seed_split_index():
    a = make_video_frames("order", sample_rng(5, "train", 7), 10, 16)
    b = make_video_frames("order", sample_rng(5, "train", 7), 10, 16)
    c = make_video_frames("order", sample_rng(5, "val", 7), 10, 16)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    assert not np.array_equal(a[0], c[0])


def test_bad_task_parameters_are_named():
    with pytest.raises(ValueError, match="unknown synthetic task 'nedle'"):
        make_video_frames("nedle", sample_rng(0, "x", 0), 8, 16)
    with pytest.raises(TypeError, match=r"unknown parameters \['depth'\]"):
        make_video_frames("count", sample_rng(0, "x", 0), 8, 16, depth=0.5)
    with pytest.raises(ValueError, match="frame_size=15"):
        ensure_synthetic("unused", frame_size=15)


# ---------------------------------------------------------------------------------------------
# Files: reproducible, cached, atomic


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("syn"), task="needle", seed=0, **TINY)


def test_generated_files_and_json(tiny_set):
    assert tiny_set.name.startswith("needle-")
    assert tiny_set == synthetic_dir(tiny_set.parent, task="needle", seed=0, **TINY)
    train, val = read_mc_json(tiny_set / "train.json"), read_mc_json(tiny_set / "val.json")
    assert [s.id for s in train] == [f"needle-train-{i:06d}" for i in range(4)] and len(val) == 2
    for s in train + val:
        assert s.task == "needle" and s.answer in s.candidates and os.path.isabs(s.video)
        assert video_info(s.video) == (8, 4.0)
        assert s.meta["event_times"] == [s.meta["needle_index"] / 4.0]
        assert s.meta["needle_index"] == int(8 * s.meta["depth"])
        clip = read_video(s.video, num_frames=8)
        y0, x0, y1, x1 = s.meta["box"]
        centre = clip.frames[s.meta["needle_index"], (y0 + y1) // 2, (x0 + x1) // 2].float().numpy()
        assert np.linalg.norm(centre - PALETTE[s.answer]) < 30
    assert json.loads((tiny_set / "params.json").read_text())["num_train"] == 4


def test_reproducible_and_seed_dependent(tiny_set, tmp_path):
    again = ensure_synthetic(tmp_path / "a", task="needle", seed=0, **TINY)
    assert again.name == tiny_set.name
    for name in ("train.json", "val.json"):
        assert (again / name).read_bytes() == (tiny_set / name).read_bytes()
    # The mp4 header holds the encoding time, so the videos are compared by their decoded frames.
    from vlc.data.video import read_video

    mp4 = "videos/train/000003.mp4"
    assert torch.equal(read_video(again / mp4, num_frames=8).frames, read_video(tiny_set / mp4, num_frames=8).frames)
    other = ensure_synthetic(tmp_path / "b", task="needle", seed=1, **TINY)
    assert other.name != tiny_set.name
    assert (other / "train.json").read_bytes() != (tiny_set / "train.json").read_bytes()
    # More samples with the same seed: the first ones are unchanged (per-sample generators).
    bigger = ensure_synthetic(tmp_path / "c", task="needle", seed=0, **{**TINY, "num_train": 6})
    first4 = json.loads((bigger / "train.json").read_text())[:4]
    assert first4 == json.loads((tiny_set / "train.json").read_text())


def test_second_call_reuses_the_cache(tiny_set, monkeypatch):
    stamps = {p: p.stat().st_mtime_ns for p in (tiny_set / "train.json", tiny_set / "videos/val/000001.mp4")}

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "write_mp4", fail)
    assert ensure_synthetic(tiny_set.parent, task="needle", seed=0, **TINY) == tiny_set
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_interrupted_generation_is_never_taken_as_done(tmp_path, monkeypatch):
    final = synthetic_dir(tmp_path, task="count", seed=0, **TINY)
    # A leftover from a killed run: a temp dir with a train.json but no videos.
    leftover = tmp_path / f".tmp-{final.name}-killed"
    (leftover / "videos").mkdir(parents=True)
    (leftover / "train.json").write_text("[]")

    calls = []
    real_write = synthetic.write_mp4

    def write_then_fail(path, frames, fps):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted half-way through the train split
        real_write(path, frames, fps)

    monkeypatch.setattr(synthetic, "write_mp4", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path, task="count", seed=0, **TINY)
    assert not final.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [leftover.name]  # its own temp dir is gone

    monkeypatch.setattr(synthetic, "write_mp4", real_write)
    out = ensure_synthetic(tmp_path, task="count", seed=0, **TINY)
    assert out == final and len(read_mc_json(out / "train.json")) == 4
    assert len(list((out / "videos").rglob("*.mp4"))) == 6


def test_needle_grid(tmp_path):
    path = ensure_needle_grid(tmp_path, lengths=[6, 12], depths=[0.0, 0.5, 0.99], num_per_cell=2, size=16, fps=2.0)
    assert path.name == "grid.json"
    samples = read_mc_json(path)
    assert len(samples) == 2 * 3 * 2 and len({s.id for s in samples}) == 12
    cells = Counter((s.meta["length"], s.meta["depth"]) for s in samples)
    assert cells == {(n, d): 2 for n in (6, 12) for d in (0.0, 0.5, 0.99)}
    for s in samples:
        n, d = s.meta["length"], s.meta["depth"]
        assert s.meta["needle_index"] == min(int(n * d), n - 1)
        assert s.meta["event_times"] == [s.meta["needle_index"] / 2.0]
    # Within a cell the two samples ask about different colours.
    by_cell = {}
    for s in samples:
        by_cell.setdefault((s.meta["length"], s.meta["depth"]), set()).add(s.answer)
    assert all(len(colours) == 2 for colours in by_cell.values())
    assert video_info(samples[-1].video) == (12, 2.0)
    assert ensure_needle_grid(tmp_path, [6, 12], [0.0, 0.5, 0.99], 2, 16, 2.0) == path
    # A cell's samples do not depend on the rest of the grid.
    alone = read_mc_json(ensure_needle_grid(tmp_path / "alone", [12], [0.5], 2, 16, 2.0))
    in_grid = [s for s in samples if (s.meta["length"], s.meta["depth"]) == (12, 0.5)]
    assert [(s.answer, s.candidates, s.meta) for s in alone] == [(s.answer, s.candidates, s.meta) for s in in_grid]


def test_no_linear_readout_finds_every_needle_colour_above_the_haystack():
    """scripts/needle_palette_separability.py: the palette surrounds the haystack's grey, so one
    direction in RGB scores at most 5 of the 8 colours above the haystack's patch greys (7 against a
    single grey, green being the odd one out) -- why a vst beacon's shared query finds half the colours."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import needle_palette_separability as sep
    finally:
        sys.path.pop(0)
    lo, hi = sep.haystack_grey_range(clips=20, percentile=0.5)
    assert 45 < lo < 80 and 165 < hi < 200  # over 200 clips: 54-183
    assert sep.most_colours_above_grey(lo, hi)[0] == 5
    n, names = sep.most_colours_above_grey(120.0, 120.0)
    assert n == 7 and "green" not in names
    assert sep.most_colours_above_grey(lo, hi, {"white": (250, 250, 250), "pale": (240, 235, 245)})[0] == 2


# ---------------------------------------------------------------------------------------------
# Options of the long-video suite: off by default, so the default data is what it always was


def test_default_samples_are_unchanged_byte_for_byte():
    """sha1 of sample 0 of each task at the defaults (32 frames of 32 px), as generated before the
    suite's options existed: `make train`'s pinned result depends on these exact frames."""
    import hashlib

    expected = {
        "needle": ("9ac26e9a9624e758", "d580f5f7c282a29d"),
        "order": ("b917fb652b3a655a", "43b6eaf6d40100b8"),
        "count": ("c5e04de45590b33d", "e3a48d871ff55f7b"),
        "ground": ("d86297f9d295fb7b", "e64bfa923355b085"),
    }
    for task, (pixels, text) in expected.items():
        frames, *rest = make_video_frames(task, sample_rng(0, "train", 0), 32, 32)
        assert hashlib.sha1(frames.tobytes()).hexdigest()[:16] == pixels, task
        assert hashlib.sha1(json.dumps(rest).encode()).hexdigest()[:16] == text, task
    # and the cache directory of the default dataset keeps its name
    assert synthetic_dir("r").name == "needle-e11fffc2c2"


def test_new_options_make_new_datasets_and_must_fit_the_task(tmp_path):
    base = synthetic_dir(tmp_path, task="order", **TINY)
    assert synthetic_dir(tmp_path, task="order", num_events=None, needle_patch=None, **TINY) == base
    assert synthetic_dir(tmp_path, task="order", num_events=3, **TINY) != base
    assert synthetic_dir(tmp_path, task="order", needle_patch=8, **TINY) != base
    with pytest.raises(ValueError, match=r"synthetic num_events=3 applies to task order, not 'count'; set it to null"):
        ensure_synthetic(tmp_path, task="count", num_events=3, **TINY)
    with pytest.raises(ValueError, match=r"synthetic needle_patch=0, expected a patch side in pixels >= 1"):
        ensure_synthetic(tmp_path, task="needle", needle_patch=0, **TINY)
    with pytest.raises(ValueError, match=r"needle_patch=6, expected a divisor of the frame side 16"):
        make_video_frames("needle", sample_rng(0, "x", 0), 4, 16, needle_patch=6)
    out = ensure_synthetic(tmp_path, task="rank", **{**TINY, "num_train": 2, "num_val": 1}, textures=["rings"])
    s = read_mc_json(out / "train.json")[0]
    assert s.task == "rank" and s.meta["texture"] == "rings" and s.question.startswith("What color is the ")
    assert json.loads((out / "params.json").read_text())["textures"] == ["rings"]


def test_needle_grid_with_a_one_patch_needle(tmp_path):
    plain = ensure_needle_grid(tmp_path, [8], [0.5], num_per_cell=1, size=32)
    small = ensure_needle_grid(tmp_path, [8], [0.5], num_per_cell=1, size=32, needle_patch=8)
    assert plain != small
    (s,) = read_mc_json(small)
    y0, x0, y1, x1 = s.meta["box"]
    assert (y1 - y0, x1 - x0) == (8, 8) and s.meta["patch"] == [y0 // 8, x0 // 8] and s.meta["needle_index"] == 4
