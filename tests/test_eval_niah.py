"""Needle in a haystack: the needle sits at int(N·depth) clamped to N-1, a 2×2 grid writes a 4-row
CSV and a heatmap, and every cell's model sees all N frames of its videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from vlc.data.annotations import read_mc_json
from vlc.data.synthetic import ensure_needle_grid
from vlc.data.video import read_video
from vlc.evaluation.niah import cell_rows, needle_index
from vlc.run import evaluate


@pytest.mark.parametrize("length,depth,index", [
    (8, 0.0, 0), (8, 0.5, 4), (8, 0.99, 7), (8, 1.0, 7), (10, 0.25, 2), (128, 0.75, 96), (16, 1.0, 15), (1, 1.0, 0),
])
def test_needle_index(length, depth, index):
    assert needle_index(length, depth) == index


def test_needle_index_rejects_depths_outside_0_1():
    with pytest.raises(ValueError, match="depth=1.5"):
        needle_index(8, 1.5)


def test_grid_videos_hold_the_needle_at_that_index(tmp_path):
    grid = ensure_needle_grid(tmp_path, lengths=[6, 8], depths=[0.5, 1.0], num_per_cell=1, size=32, fps=4.0)
    for s in read_mc_json(grid):
        n, depth = s.meta["length"], s.meta["depth"]
        frames = read_video(s.video, num_frames=n).frames.float()  # (N, H, W, 3)
        saturation = (frames.amax(-1) - frames.amin(-1)).mean((1, 2))  # the haystack is grey
        assert int(saturation.argmax()) == needle_index(n, depth) == s.meta["needle_index"]


def test_niah_grid_writes_csv_heatmap_and_metrics(cfg_factory):
    cfg = cfg_factory(["ckpt_path=null", "mode=niah", "niah.lengths=[4,8]", "niah.depths=[0.0,1.0]",
                       "niah.per_cell=2"], name="eval")
    metrics = evaluate(cfg)
    run = Path(cfg.paths.output_dir)
    with open(run / "niah.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert [(int(r["length"]), float(r["depth"])) for r in rows] == [(4, 0.0), (4, 1.0), (8, 0.0), (8, 1.0)]
    for r in rows:
        assert int(r["n"]) == 2 and 0.0 <= float(r["accuracy"]) <= 1.0
        assert float(r["visual_tokens"]) == 16 * int(r["length"])  # compressor none: every frame's 16 tokens
        assert float(r["prefill_ms"]) > 0 and float(r["kv_bytes"]) > 0
    assert (run / "niah_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    preds = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and all(p["frames"] == p["length"] for p in preds)  # all N frames decoded
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["niah/cells"] == 4 and on_disk["niah/n"] == 8
    assert on_disk["niah/acc"] == pytest.approx(sum(p["correct"] for p in preds) / 8) == metrics["niah/acc"]


def test_niah_with_lazy_decoding_scores_the_same(cfg_factory):
    grid = ["ckpt_path=null", "mode=niah", "niah.lengths=[12]", "niah.depths=[0.0,1.0]", "niah.per_cell=2",
            "compressor=vst", "compressor.window=64"]  # 12 frames x 16 tokens: 3 windows of 4 frames

    def predictions(*extra):
        cfg = cfg_factory(grid + list(extra), name="eval")
        metrics = evaluate(cfg)
        lines = (Path(cfg.paths.output_dir) / "predictions.jsonl").read_text().splitlines()
        return metrics, [json.loads(x) for x in lines]

    eager, eager_preds = predictions()
    lazy, lazy_preds = predictions("data.lazy_decode=true")
    assert lazy["niah/n"] == eager["niah/n"] == 4
    assert [p["scores"] for p in lazy_preds] == [p["scores"] for p in eager_preds]
    assert all(p["kv_tokens"] == 4 + 12 * 16 // 16 for p in lazy_preds)  # prefix + one beacon per 16 tokens


def test_cell_rows_average_per_cell():
    cost = dict(visual_tokens=1, kv_tokens=2, kv_bytes=3, encoder_ms=4.0, prefill_ms=5.0, context_ms=9.0, peak_mem_mb=7)
    records = [dict(length=4, depth=0.5, correct=c, **cost) for c in (True, False, True)]
    records.append(dict(length=4, depth=0.0, correct=False, **{**cost, "prefill_ms": 1.0}))
    rows = cell_rows(records)
    assert [(r["depth"], r["n"], r["accuracy"]) for r in rows] == [(0.0, 1, 0.0), (0.5, 3, pytest.approx(2 / 3))]
    assert rows[0]["prefill_ms"] == 1.0 and rows[1]["prefill_ms"] == 5.0
    torch.testing.assert_close(torch.tensor(rows[1]["context_ms"]), torch.tensor(9.0))
