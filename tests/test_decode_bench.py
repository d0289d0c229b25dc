"""``scripts/bench_decode.py`` runs end to end on a small clip: before and after rows for both
backends, the same timestamps, pixels within the uint8 resize's rounding, less memory after."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_decode.py"


@pytest.mark.slow
def test_bench_decode_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_decode", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--seconds", "4", "--height", "144", "--width", "256", "--frames", "16", "--size", "64",
                       "--repeats", "1", "--cache", str(tmp_path)])
    assert [(r["backend"], r["path"]) for r in rows] == [("decord", "before"), ("decord", "after"),
                                                         ("av", "before"), ("av", "after")]
    for r in rows:
        if r["path"] == "after":
            assert r["same_times"] and r["max_diff"] <= 1 and r["mean_diff"] < 0.5
