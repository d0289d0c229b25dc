"""scripts/suite_lengths.py: which jobs of an ablation it evaluates, and the length table it writes
(eval.py itself is stubbed: what it runs is tested through eval.py's own tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import suite_lengths  # noqa: E402


def _job(root: Path, num: int, variant: str, seed: int, acc: float, finished: bool = True) -> Path:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+experiment@_global_={variant}", f"seed={seed}"]))
    (job / "config_resolved.yaml").write_text(yaml.safe_dump({"data": {"num_frames": 64}}))
    if finished:
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "last.ckpt").write_bytes(b"")
        (job / "metrics.json").write_text(json.dumps({"val/acc": acc, "val/visual_tokens": 1024.0,
                                                      "compressor": "Identity"}))
    return job


def test_jobs_in_sweep_order_and_only_finished_ones(tmp_path):
    for num in range(12):  # 10 and 11 after 9, not after 1
        _job(tmp_path, num, f"v{num}", 0, 0.5, finished=num != 3)
    jobs = suite_lengths.find_jobs(tmp_path)
    assert [v for v, _ in jobs] == [f"v{n}" for n in range(12) if n != 3]


def test_length_table_pairs_each_variant_with_its_seeds(tmp_path, monkeypatch):
    """none: seeds 0.70 / 0.60 (mean 0.65), seed 0 at 256 frames 0.40 with 4096 tokens; pool: one seed."""
    _job(tmp_path / "sweep", 0, "none_baseline", 0, 0.70)
    _job(tmp_path / "sweep", 1, "none_baseline", 1, 0.60)
    _job(tmp_path / "sweep", 2, "pool_baseline", 0, 0.50)
    calls = []

    def fake_eval(out, overrides):
        calls.append(overrides)
        pool = "pool" in str(out)
        return {"val/acc": 0.30 if pool else 0.40, "val/visual_tokens": 1024.0 if pool else 4096.0,
                "val/acc_needle": 0.5, "val/acc_task_mean": 0.4}

    monkeypatch.setattr(suite_lengths, "run_eval", fake_eval)
    out = tmp_path / "out"
    out.mkdir()
    suite_lengths.lengths(suite_lengths.find_jobs(tmp_path / "sweep"), out, [256], per_task=10, seed=0)
    assert len(calls) == 2 and "data.synthetic.num_frames=256" in calls[0] and "data.synthetic.num_val=10" in calls[0]
    assert calls[0][0].endswith("sweep/0/checkpoints/last.ckpt")
    table = (out / "lengths.md").read_text().splitlines()
    assert table[0] == ("| variant | val acc, mean of seeds | seed 0, 64 frames | seed 0, 256 frames "
                        "| visual tokens at 64 / 256 |")
    assert table[2] == "| none_baseline | 0.650 | 0.700 | 0.400 | 1024 / 4096 |"
    assert table[3] == "| pool_baseline | 0.500 | 0.500 | 0.300 | 1024 / 1024 |"
    assert (out / "accuracy_vs_frames.png").stat().st_size > 0
    assert "needle_256" in (out / "lengths.csv").read_text().splitlines()[0]
