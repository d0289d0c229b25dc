"""Temporal grounding: the synthetic ``ground`` task, span parsing, the IoU / R@1 metric, and the
model's evaluation path that generates spans for grounding samples only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vlc.data.annotations import read_mc_json
from vlc.data.synthetic import (
    PALETTE,
    QUESTIONS,
    TASKS,
    ensure_synthetic,
    format_span,
    make_video_frames,
    sample_rng,
)
from vlc.data.video import read_video
from vlc.evaluation.records import ground_fields
from vlc.evaluation.grounding import TemporalGroundingIoU, parse_span, span_iou
from vlc.run import build_model, train

from conftest import TINY_DATA, fake_batch

NAN = math.nan


def is_grey(frame: np.ndarray) -> bool:
    return bool(np.all(frame[..., 0] == frame[..., 1]) and np.all(frame[..., 1] == frame[..., 2]))


def red_pixels(frame: np.ndarray) -> int:
    return int(np.all(frame == np.array(PALETTE["red"], np.uint8), axis=-1).sum())


# ---------------------------------------------------------------------------------------------
# The generator


def test_ground_is_a_synthetic_task():
    assert "ground" in TASKS and QUESTIONS["ground"] == "When does the red circle appear?"


@pytest.mark.parametrize("index", range(6))
def test_red_frames_are_exactly_the_span(index):
    frames, question, candidates, answer, meta = make_video_frames("ground", sample_rng(0, "g", index), 24, 16, 4.0)
    start, length = meta["start_index"], meta["span_frames"]
    assert 2 <= length <= 24 // 4 and 0 <= start <= 24 - length
    assert meta["event_indices"] == list(range(start, start + length))
    assert meta["shape"] == "circle" and meta["color"] == "red"
    for t in range(24):
        inside = start <= t < start + length
        assert is_grey(frames[t]) != inside, t
        assert (red_pixels(frames[t]) > 0) == inside, t
    # The span in seconds: start = the first red frame's timestamp, end = just after the last one.
    assert meta["span"] == [start / 4.0, (start + length) / 4.0]
    assert answer == format_span(*meta["span"])
    assert parse_span(answer) == tuple(meta["span"])


def test_answer_text_is_exact_at_quarter_seconds():
    _, _, _, answer, meta = make_video_frames("ground", sample_rng(0, "g", 0), 16, 16, 4.0, span_frames=3, start=1)
    assert meta["span"] == [0.25, 1.0] and answer == "0.25-1.0"
    _, _, _, answer, _ = make_video_frames("ground", sample_rng(0, "g", 0), 32, 16, 4.0, span_frames=6, start=10)
    assert answer == "2.5-4.0"


@pytest.mark.parametrize("index", range(6))
def test_candidates_are_four_distinct_spans_of_the_answers_length(index):
    _, _, candidates, answer, meta = make_video_frames("ground", sample_rng(1, "g", index), 16, 16, 4.0)
    assert len(candidates) == 4 == len(set(candidates)) and answer in candidates
    length = meta["span"][1] - meta["span"][0]
    for c in candidates:
        start, end = parse_span(c)
        assert c == format_span(start, end) and end - start == pytest.approx(length)
        assert (start * 4.0).is_integer() and 0 <= start and end <= 16 / 4.0


def test_reproducible_per_sample():
    a = make_video_frames("ground", sample_rng(5, "train", 7), 16, 16, 4.0)
    b = make_video_frames("ground", sample_rng(5, "train", 7), 16, 16, 4.0)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    others = [make_video_frames("ground", sample_rng(5, "train", i), 16, 16, 4.0) for i in range(8)]
    assert len({o[3] for o in others}) > 1  # the answer varies across samples


def test_too_short_a_video_is_named():
    with pytest.raises(ValueError, match=r"ground task: span_frames=2 in num_frames=4"):
        make_video_frames("ground", sample_rng(0, "g", 0), 4, 16, 4.0)
    with pytest.raises(ValueError, match=r"ground task: start=9"):
        make_video_frames("ground", sample_rng(0, "g", 0), 10, 16, 4.0, span_frames=2, start=9)
    with pytest.raises(TypeError, match=r"unknown parameters \['depth'\]"):
        make_video_frames("ground", sample_rng(0, "g", 0), 16, 16, 4.0, depth=0.5)


def test_generated_dataset_keeps_the_span(tmp_path):
    folder = ensure_synthetic(tmp_path, task="ground", num_frames=8, frame_size=16, fps=4.0, num_train=2, num_val=2)
    assert folder.name.startswith("ground-")
    for s in read_mc_json(folder / "train.json") + read_mc_json(folder / "val.json"):
        assert s.task == "ground" and s.answer in s.candidates
        assert s.answer == format_span(*s.meta["span"])
        assert s.meta["event_times"] == [i / 4.0 for i in s.meta["event_indices"]]
        clip = read_video(s.video, num_frames=8)
        assert clip.times[s.meta["event_indices"][0]].item() == pytest.approx(s.meta["span"][0])
        centre = clip.frames[:, 8, 8].float().numpy()  # (T, 3): the circle's centre in every frame
        red = np.linalg.norm(centre - np.array(PALETTE["red"]), axis=1) < 40
        assert red.nonzero()[0].tolist() == s.meta["event_indices"]


# ---------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "text, span",
    [
        ("2.5-4.0", (2.5, 4.0)),
        ("2.5 - 4.0", (2.5, 4.0)),
        ("from 2.5 to 4.0", (2.5, 4.0)),
        ("From 2.5s to 4.0s.", (2.5, 4.0)),
        ("between 1 and 2 seconds", (1.0, 2.0)),
        ("0.25–1.0", (0.25, 1.0)),
        ("4.0-2.5", (2.5, 4.0)),  # reversed: swapped
        ("A) 0.25-1.0", (0.25, 1.0)),  # letter-style answer
        ("2.5-4.0<junk after the answer> 7-8", (2.5, 4.0)),  # the first span wins
    ],
)
def test_parse_span_accepts(text, span):
    assert parse_span(text) == span


@pytest.mark.parametrize("text", [None, "", "red", "3", "2.5", "soon", "a-b", "1.2.3", "- 4.0", "two to four"])
def test_parse_span_rejects_garbage(text):
    assert parse_span(text) is None


# ---------------------------------------------------------------------------------------------
# The metric


def test_span_iou_hand_computed():
    pred = torch.tensor([[0.0, 2.0], [1.0, 3.0], [4.0, 5.0], [NAN, NAN], [3.0, 1.0], [0.0, 2.0], [1.0, NAN]])
    target = torch.tensor([[1.0, 3.0], [1.0, 3.0], [1.0, 3.0], [1.0, 3.0], [1.0, 3.0], [0.0, 4.0], [1.0, 3.0]])
    iou = span_iou(pred, target)
    assert iou.tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0, 1.0, 0.5, 0.0])


def test_metric_hand_computed():
    metric = TemporalGroundingIoU()
    # IoUs 1/3, 1, 0 (disjoint), 0 (NaN: unparseable), 0.5 (exactly on a threshold: counts as a hit)
    metric.update(torch.tensor([[0.0, 2.0], [1.0, 3.0]]), torch.tensor([[1.0, 3.0], [1.0, 3.0]]))
    metric.update(torch.tensor([[4.0, 5.0], [NAN, NAN], [0.0, 2.0]]),
                  torch.tensor([[1.0, 3.0], [1.0, 3.0], [0.0, 4.0]]))
    out = {k: float(v) for k, v in metric.compute().items()}
    assert set(out) == {"miou", "r1@0.3", "r1@0.5", "r1@0.7", "invalid"}
    assert out["miou"] == pytest.approx((1 / 3 + 1 + 0 + 0 + 0.5) / 5)
    assert out["r1@0.3"] == pytest.approx(3 / 5)
    assert out["r1@0.5"] == pytest.approx(2 / 5)
    assert out["r1@0.7"] == pytest.approx(1 / 5)
    assert out["invalid"] == pytest.approx(1 / 5)
    assert int(metric.invalid) == 1 and int(metric.total) == 5
    metric.reset()
    metric.update(torch.tensor([[NAN, NAN]]), torch.tensor([[1.0, 2.0]]))
    out = metric.compute()
    assert float(out["miou"]) == 0.0 and float(out["r1@0.3"]) == 0.0 and float(out["invalid"]) == 1.0


def test_metric_states_sum_across_processes():
    """Every state is reduced by a sum, so two ranks' halves give the figures of the whole."""
    pred = torch.tensor([[0.0, 2.0], [1.0, 3.0], [4.0, 5.0], [NAN, NAN]])
    target = torch.tensor([[1.0, 3.0]] * 4)
    whole, a, b = TemporalGroundingIoU(), TemporalGroundingIoU(), TemporalGroundingIoU()
    whole.update(pred, target)
    a.update(pred[:1], target[:1])
    b.update(pred[1:], target[1:])
    assert {name: fx.__name__ for name, fx in a._reductions.items()} == {
        "iou_sum": "dim_zero_sum", "hits": "dim_zero_sum", "total": "dim_zero_sum", "invalid": "dim_zero_sum"
    }
    a.merge_state(b)  # what dist_reduce_fx="sum" does to the gathered states
    for key, value in whole.compute().items():
        assert float(a.compute()[key]) == pytest.approx(float(value)), key


def test_metric_rejects_bad_shapes_and_targets():
    metric = TemporalGroundingIoU()
    with pytest.raises(ValueError, match=r"expected both \(N, 2\)"):
        metric.update(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"meta\['span'\]"):
        metric.update(torch.zeros(1, 2), torch.tensor([[NAN, 1.0]]))
    with pytest.raises(ValueError, match="thresholds"):
        TemporalGroundingIoU(thresholds=[0.0])


# ---------------------------------------------------------------------------------------------
# The model's evaluation path


def test_only_grounding_samples_are_generated_for(cfg_factory, monkeypatch):
    model = build_model(cfg_factory([*TINY_DATA]))
    model.eval()
    batch = fake_batch(B=4, T=4)
    batch["tasks"] = ["needle", "ground", "needle", "ground"]
    batch["meta"] = [{}, {"span": [0.25, 0.75]}, {}, {"span": [0.0, 0.5]}]
    batch["skipped"] = []
    seen = []

    def fake_generate(sub, max_new_tokens=None):
        seen.append(sub)
        return ["0.25 - 0.75", "no idea"]

    monkeypatch.setattr(model.pipeline, "generate", fake_generate)
    extra = ground_fields(model.pipeline, batch)
    assert len(seen) == 1 and seen[0]["ids"] == ["s1", "s3"] and seen[0]["pixels"].shape[0] == 2
    assert torch.equal(seen[0]["pixels"][1], batch["pixels"][3])
    assert extra == {
        1: dict(generated="0.25 - 0.75", pred_span=[0.25, 0.75], iou=1.0),
        3: dict(generated="no idea", pred_span=None, iou=0.0),
    }

    batch["tasks"] = ["needle"] * 4
    assert ground_fields(model.pipeline, batch) == {} and len(seen) == 1  # no ground sample: no generation

    batch["tasks"][0] = "ground"
    with pytest.raises(ValueError, match=r"sample 's0' has task 'ground' but meta\['span'\]=None"):
        ground_fields(model.pipeline, batch)


def test_short_ground_run_writes_grounding_metrics(cfg_factory):
    cfg = cfg_factory(["data.synthetic.task=ground", *TINY_DATA, "trainer.max_steps=2", "trainer.val_check_interval=2",
                       "trainer.log_every_n_steps=1", "callbacks.progress_bar.refresh_rate=0"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    on_disk = json.loads((run / "metrics.json").read_text())
    for key in ("val/miou", "val/r1@0.3", "val/r1@0.5", "val/r1@0.7", "val/span_invalid"):
        assert key in on_disk and 0.0 <= on_disk[key] <= 1.0, key
        assert metrics[key] == on_disk[key]
    assert "val/acc" in on_disk  # still scored as multiple choice too
    lines = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    for p in lines:
        assert p["task"] == "ground" and isinstance(p["generated"], str)
        assert p["pred_span"] == (list(parse_span(p["generated"])) if parse_span(p["generated"]) else None)
        assert 0.0 <= p["iou"] <= 1.0 and len(p["meta"]["span"]) == 2
    mean_iou = sum(p["iou"] for p in lines) / len(lines)
    assert on_disk["val/miou"] == pytest.approx(mean_iou, abs=1e-3)
    invalid = sum(p["pred_span"] is None for p in lines) / len(lines)
    assert on_disk["val/span_invalid"] == pytest.approx(invalid)


def test_eval_summary_reports_span_metrics_from_records():
    """Every evaluation's summary (vlc.evaluation.records.summarize) reports the span figures."""
    from vlc.evaluation.records import summarize as summarize_records

    base = dict(task="ground", correct=True, visual_tokens=1, kv_tokens=1, kv_bytes=1, encoder_ms=1.0,
                prefill_ms=1.0, context_ms=1.0, peak_mem_mb=1.0, base_mem_mb=1.0)
    records = [dict(base, iou=1.0, pred_span=[0.0, 1.0]), dict(base, iou=0.4, pred_span=[0.0, 2.5]),
               dict(base, iou=0.0, pred_span=None), dict(base, task="needle")]
    out = summarize_records(records)
    assert out["val/miou"] == pytest.approx(1.4 / 3)
    assert (out["val/r1@0.3"], out["val/r1@0.5"], out["val/r1@0.7"]) == pytest.approx((2 / 3, 1 / 3, 1 / 3))
    assert out["val/span_invalid"] == pytest.approx(1 / 3)
    assert "val/miou" not in summarize_records([dict(base, task="needle")])
