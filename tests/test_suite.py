"""The synthetic long-video suite: what each task holds for a fixed seed, the held-out split's
looks, chance, the 1024-frame plan, caching and the data module's splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlc.data.annotations import read_mc_json
from vlc.data.datamodule import VideoDataModule
from vlc.data.suite import ensure_suite, make_planned_sample, read_suite_summary, suite_dir, suite_plan
from vlc.data.synthetic import PALETTE, make_video_frames, sample_rng
from vlc.data.video import read_video, video_info

# The tasks of configs/data/suite.yaml, on short haystacks.
TASKS = {
    "needle": {"family": "needle"},
    "needle_small": {"family": "needle", "needle_patch": 8},
    "rank": {"family": "rank", "num_needles": 3},
    "order3": {"family": "order", "num_events": 3},
    "count": {"family": "count"},
    "ground": {"family": "ground"},
}
SMALL = dict(num_frames=12, frame_size=32, fps=4.0, num_train=3, num_val=2, num_heldout=2, seed=0)
TRAIN_LOOKS = ({"blocks", "stripes"}, {"square", "circle"})
HELDOUT_LOOKS = ({"checker", "rings"}, {"diamond", "cross"})


def is_grey(frame: np.ndarray) -> bool:
    return bool(np.all(frame[..., 0] == frame[..., 1]) and np.all(frame[..., 1] == frame[..., 2]))


def coloured(frame: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that are not grey."""
    return ~((frame[..., 0] == frame[..., 1]) & (frame[..., 1] == frame[..., 2]))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return ensure_suite(tmp_path_factory.mktemp("suite"), TASKS, **SMALL)


# ---------------------------------------------------------------------------------------------
# What each task holds, for a fixed seed


def test_small_needle_fills_one_patch_of_the_frame():
    frames, question, candidates, answer, meta = make_video_frames(
        "needle", sample_rng(0, "val/x", 0), 64, 32, needle_patch=8, depth=0.5
    )
    assert question == "What color is the shape that appears briefly in the video?"
    assert (answer, meta["needle_index"], meta["shape"]) == ("blue", 32, "square")
    assert meta["box"] == [8, 8, 16, 16] and meta["patch"] == [1, 1]  # one 8×8 cell of the 4×4 grid
    assert candidates == ["purple", "cyan", "green", "blue"]
    mask = coloured(frames[32])
    assert mask.sum() == 64 and mask[8:16, 8:16].all()  # the square is the whole patch, nothing else
    assert all(is_grey(frames[t]) for t in range(64) if t != 32)
    # Other shapes stay inside their patch: circle 52, diamond 40, cross 28, triangle 32 of 64 pixels.
    for shape, pixels in (("circle", 52), ("diamond", 40), ("cross", 28), ("triangle", 32)):
        f, _, _, a, m = make_video_frames("needle", sample_rng(0, "val/x", 0), 8, 32, needle_patch=8, depth=0.0,
                                          shapes=[shape])
        y0, x0, y1, x1 = m["box"]
        assert (y1 - y0, x1 - x0) == (8, 8) and y0 % 8 == 0 == x0 % 8 and m["shape"] == shape
        inside = np.all(f[0] == np.array(PALETTE[a], np.uint8), axis=-1)
        assert inside.sum() == pixels and inside[y0:y1, x0:x1].sum() == pixels


def test_small_needle_survives_h264_at_its_patch(suite):
    samples = [s for s in read_mc_json(suite / "val.json") if s.task == "needle_small"]
    assert [s.meta["patch"] for s in samples] == [[0, 2], [3, 2]]
    for s in samples:
        clip = read_video(s.video, num_frames=12)
        y0, x0, y1, x1 = s.meta["box"]
        frame = clip.frames[s.meta["needle_index"]].float().numpy()  # (H, W, 3)
        patch = frame[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3).mean(0)  # the centre 4×4
        assert np.linalg.norm(patch - PALETTE[s.answer]) < 45
        # the rest of the frame stays near grey: the colour is in that one patch
        rest = np.ones(frame.shape[:2], bool)
        rest[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2] = False
        assert np.abs(frame[rest] - frame[rest].mean(-1, keepdims=True)).max() < 25


def test_rank_asks_about_one_needle_by_its_place():
    frames, question, candidates, answer, meta = make_video_frames("rank", sample_rng(0, "val/x", 0), 64, 32)
    assert question == "What color is the second shape to appear?"
    assert meta["colors"] == ["purple", "orange", "blue"] and meta["starts"] == [1, 7, 13]
    assert meta["rank"] == 2 and answer == "orange" and meta["target_indices"] == [7]
    assert candidates == ["purple", "blue", "orange", "cyan"]  # all three needles' colours are options
    assert [t for t in range(64) if not is_grey(frames[t])] == [1, 7, 13]
    # Five needles: the options are four of them, the answer among them.
    _, question, candidates, answer, meta = make_video_frames("rank", sample_rng(0, "val/x", 0), 64, 32, num_needles=5)
    assert question == "What color is the third shape to appear?" and meta["rank"] == 3
    assert meta["colors"] == ["magenta", "cyan", "red", "purple", "green"] and answer == "red"
    assert set(candidates) <= set(meta["colors"]) and len(set(candidates)) == 4 and answer in candidates
    with pytest.raises(ValueError, match=r"rank task: rank=4, expected 1 … num_needles=3"):
        make_video_frames("rank", sample_rng(0, "x", 0), 64, 32, rank=4)
    with pytest.raises(ValueError, match=r"rank task needs num_frames >= num_needles\*needle_frames\+.* = 5"):
        make_video_frames("rank", sample_rng(0, "x", 0), 4, 32)


def test_order_of_three_and_four_events():
    frames, question, candidates, answer, meta = make_video_frames("order", sample_rng(0, "val/x", 0), 64, 32,
                                                                   num_events=3)
    assert question == "In what order do the colors appear?"
    assert meta["colors"] == ["purple", "orange", "blue"] and meta["starts"] == [1, 7, 13]
    assert answer == "purple, orange, blue"
    assert candidates == ["purple, blue, orange", "blue, orange, purple", "orange, blue, purple",
                          "purple, orange, blue"]
    for c in candidates:  # every option is an order of the same three colours
        assert sorted(c.split(", ")) == sorted(meta["colors"])
    assert [t for t in range(64) if not is_grey(frames[t])] == [1, 7, 13]
    _, _, candidates, answer, meta = make_video_frames("order", sample_rng(0, "val/x", 0), 64, 32, num_events=4)
    assert meta["starts"] == [1, 16, 29, 37] and answer == "cyan, red, green, orange"
    assert len(set(candidates)) == 4 and answer in candidates
    # Every layout keeps a haystack frame between events: 3 clips of 2 frames in 8 fit one way only.
    frames, _, _, _, meta = make_video_frames("order", sample_rng(0, "o", 1), 8, 16, num_events=3, needle_frames=2)
    assert meta["starts"] == [0, 3, 6] and meta["event_indices"] == [0, 1, 3, 4, 6, 7]


def test_count_over_a_long_haystack():
    frames, question, candidates, answer, meta = make_video_frames("count", sample_rng(0, "val/x", 0), 128, 32,
                                                                   count_range=[1, 8])
    assert question == "How many times does the red shape appear?"
    assert candidates == [str(k) for k in range(1, 9)] and answer == "3" == str(meta["count"])
    assert meta["event_indices"] == [3, 37, 113]  # spread over the 128 frames
    assert [t for t in range(128) if not is_grey(frames[t])] == [3, 37, 113]
    with pytest.raises(ValueError, match=r"count=9, expected 1 … 8"):
        make_video_frames("count", sample_rng(0, "x", 0), 128, 32, count_range=[1, 8], count=9)


def test_ground_on_a_long_video_names_no_shape_when_shapes_are_given():
    frames, question, candidates, answer, meta = make_video_frames("ground", sample_rng(0, "val/x", 0), 256, 32,
                                                                   shapes=["square"])
    assert question == "When does the red shape appear?" and meta["shape"] == "square"
    assert meta["span"] == [16.75, 22.75] and meta["span_frames"] == 24 and meta["start_index"] == 67
    assert answer == "16.75-22.75" and answer in candidates and len(set(candidates)) == 4
    assert [t for t in range(256) if not is_grey(frames[t])] == list(range(67, 91))


def test_textures_are_grey_and_differ():
    spreads = {}
    for texture in ("blocks", "stripes", "checker", "rings"):
        frames, *_, meta = make_video_frames("needle", sample_rng(0, "t", 0), 3, 32, depth=0.0, textures=[texture])
        assert meta["texture"] == texture and is_grey(frames[1]) and is_grey(frames[2])
        spreads[texture] = frames[1, ..., 0]
    # No two families give the same haystack for the same draws.
    names = list(spreads)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(spreads[a].astype(int) - spreads[b].astype(int)).mean() > 5
    with pytest.raises(ValueError, match=r"synthetic textures=\['marble'\]: expected a non-empty list of"):
        make_video_frames("needle", sample_rng(0, "t", 0), 3, 32, textures=["marble"])


# ---------------------------------------------------------------------------------------------
# The suite: splits, held-out looks, chance, plan


def test_suite_files_and_chance(suite):
    summary = read_suite_summary(suite)
    assert list(summary["tasks"]) == list(TASKS)
    assert {name: t["chance"] for name, t in summary["tasks"].items()} == dict.fromkeys(TASKS, 0.25)
    assert summary["tasks"]["rank"]["family"] == "rank" and summary["tasks"]["order3"]["params"] == {"num_events": 3}
    assert {s: v["samples"] for s, v in summary["splits"].items()} == {"train": 18, "val": 12, "heldout": 12}
    assert summary["splits"]["val"]["chance"] == 0.25
    train = read_mc_json(suite / "train.json")
    # interleaved task by task, ids name task, split and index
    assert [s.id for s in train[:7]] == [f"{t}-train-000000" for t in TASKS] + ["needle-train-000001"]
    for s in train:
        assert s.meta["chance"] == 0.25 == 1 / len(s.candidates) and s.meta["family"] == TASKS[s.task]["family"]
        assert s.answer in s.candidates and s.meta["length"] == 12
        assert s.meta["event_times"] == [i / 4.0 for i in s.meta["event_indices"]]
    assert video_info(train[0].video) == (12, 4.0)
    assert train[0].video.endswith("videos/train/needle/000000.mp4")
    # A count range of 1-8 has 8 options: chance 0.125.
    plan = suite_plan({"count8": {"family": "count", "count_range": [1, 8]}}, num_frames=32, num_train=1, num_val=0,
                      num_heldout=0)
    _, _, candidates, _, _ = make_planned_sample(plan[0], 32, 4.0)
    assert len(candidates) == 8


def test_heldout_textures_and_shapes_never_appear_in_training(suite):
    seen = {split: (set(), set()) for split in ("train", "val", "heldout")}
    for split in seen:
        for s in read_mc_json(suite / f"{split}.json"):
            seen[split][0].add(s.meta["texture"])
            seen[split][1].update(s.meta["shapes"] if "shapes" in s.meta else [s.meta["shape"]])
    for split in ("train", "val"):
        assert seen[split][0] <= TRAIN_LOOKS[0] and seen[split][1] <= TRAIN_LOOKS[1]
    assert seen["heldout"] == HELDOUT_LOOKS  # both textures and both shapes show up in 12 samples
    assert not seen["heldout"][0] & (seen["train"][0] | seen["val"][0])
    assert not seen["heldout"][1] & (seen["train"][1] | seen["val"][1])
    with pytest.raises(ValueError, match=r"heldout_shapes=\['circle', 'cross'\] shares \['circle'\] with shapes="):
        suite_plan(TASKS, heldout_shapes=["circle", "cross"])


def test_plan_at_1024_frames():
    plan = suite_plan(TASKS, num_frames=1024, num_train=0, num_val=20, num_heldout=0)
    assert len(plan) == 6 * 20 and {e["split"] for e in plan} == {"val"}
    assert [e["task"] for e in plan[:6]] == list(TASKS) and plan[-1]["id"] == "ground-val-000019"
    assert plan[1]["params"] == {"needle_patch": 8, "textures": ["blocks", "stripes"], "shapes": ["square", "circle"]}
    frames, _, _, answer, meta = make_planned_sample(plan[1], 32, 4.0)  # needle_small, index 0: no video written
    assert frames.shape == (1024, 32, 32, 3) and meta["length"] == 1024
    assert (meta["needle_index"], meta["patch"], answer) == (913, [2, 2], "yellow")
    assert [t for t in range(1024) if not is_grey(frames[t])] == [913]
    _, _, candidates, answer, meta = make_planned_sample(plan[5], 32, 4.0)  # ground: spans up to 1024/4 frames
    assert 2 <= meta["span_frames"] <= 256 and meta["span"][1] <= 1024 / 4.0 and answer in candidates


def test_samples_depend_on_their_own_task_only(suite, tmp_path):
    alone = suite_plan({"rank": TASKS["rank"]}, **{k: v for k, v in SMALL.items() if k not in ("frame_size", "fps")})
    in_suite = [s for s in read_mc_json(suite / "train.json") if s.task == "rank"]
    for entry, s in zip([e for e in alone if e["split"] == "train"], in_suite):
        _, question, candidates, answer, meta = make_planned_sample(entry, 32, 4.0)
        assert (question, candidates, answer) == (s.question, s.candidates, s.answer)
        assert meta["starts"] == s.meta["starts"]
    assert suite_dir(suite.parent, TASKS, **SMALL) == suite
    assert suite_dir(suite.parent, TASKS, **{**SMALL, "seed": 1}) != suite


def test_bad_suite_tasks_are_named():
    with pytest.raises(ValueError, match=r"suite task 'x': family='flash', expected one of"):
        suite_plan({"x": {"family": "flash"}})
    with pytest.raises(ValueError, match=r"suite task 'c' \(family count\): unknown parameters \['num_events'\]"):
        suite_plan({"c": {"family": "count", "num_events": 3}})
    with pytest.raises(ValueError, match=r"unknown parameters \['textures'\] \(set per split by the suite"):
        suite_plan({"n": {"family": "needle", "textures": ["blocks"]}})
    with pytest.raises(ValueError, match=r"suite task 'o' \(family order\): order task needs num_frames >= .* = 5 "):
        make_planned_sample(suite_plan({"o": {"family": "order", "num_events": 3}}, num_frames=4)[0], 32, 4.0)


# ---------------------------------------------------------------------------------------------
# The data module: source "suite"


def test_datamodule_serves_the_heldout_split_as_test(suite):
    dm = VideoDataModule(source="suite", root=str(suite.parent), synthetic={"tasks": TASKS, **SMALL}, num_frames=12,
                         batch_size=4)
    assert dm.has_test
    dm.prepare_data()
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 18, "val": 12, "test": 12}
    batch = next(iter(dm.test_dataloader()))
    assert batch["pixels"].shape == (4, 12, 3, 32, 32)
    assert batch["tasks"] == ["needle", "needle_small", "rank", "order3"]
    assert all(m["texture"] in HELDOUT_LOOKS[0] for m in batch["meta"])
    # A length set: val only, no train or held-out file, no test split.
    only_val = VideoDataModule(source="suite", root=str(suite.parent), num_frames=16, synthetic={
        "tasks": {"needle_small": TASKS["needle_small"]}, **SMALL, "num_frames": 16, "num_train": 0, "num_heldout": 0})
    assert not only_val.has_test
    only_val.setup()
    assert list(only_val.datasets) == ["val"] and len(only_val.datasets["val"]) == 2
    folder = suite_dir(suite.parent, {"needle_small": TASKS["needle_small"]},
                       **{**SMALL, "num_frames": 16, "num_train": 0, "num_heldout": 0})
    assert sorted(p.name for p in folder.glob("*.json")) == ["params.json", "suite.json", "val.json"]
    assert json.loads((folder / "params.json").read_text())["kind"] == "suite"
