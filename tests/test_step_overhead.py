"""``scripts/step_overhead.py`` runs end to end at tiny size and reports every field; the ratio itself
is a benchmark (docs/benchmarks.md), not something a test can pin on a shared machine."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "step_overhead.py"


def test_step_overhead_fields(tmp_path):
    spec = importlib.util.spec_from_file_location("step_overhead", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- vlc-bench:step-overhead -->\nold\n<!-- /vlc-bench:step-overhead -->\n")
    result = script.main(["--repeats", "2", "--warmup", "1", "--out", str(tmp_path / "step.json"),
                          "--update-docs", str(docs), "data.batch_size=2", "data.num_frames=8",
                          f"paths.data_dir={tmp_path.parent / 'vlc-test-data'}"])
    assert result["threads"] == 1 and result["overrides"][0] == "experiment=vst_ratio16"
    assert list(result["phases"]) == ["uncompressed", "compressed"]
    for phase, r in result["phases"].items():
        assert r["pairs"] == 2 and len(r["vlc_ms_each"]) == len(r["bare_ms_each"]) == 2
        for key in ("vlc_ms", "bare_ms", "bare_optimizer_ms", "bare_one_pass_ms"):
            assert r[key] > 0
        assert r["ratio"] == r["vlc_ms"] / r["bare_ms"]
        assert r["ratio_with_optimizer"] == r["vlc_ms"] / (r["bare_ms"] + r["bare_optimizer_ms"])
        t = r["tokens"]
        # 2 samples of 8 frames × 16 tokens after the 4-token prefix; the compressed phase adds the
        # beacons vst inserted (one window of 128 raw tokens: ceil(128 / r), r drawn from 2, 4, 8, 12, 16)
        assert (t["batch"], t["prefix"], t["visual"]) == (2, 4, 128)
        allowed = {0} if phase == "uncompressed" else {64, 32, 16, 11, 8}
        assert set(t["beacons_each"]) <= allowed and len(t["beacons_each"]) == len(t["text_each"]) == 2
        totals = sorted(4 + 128 + b + x for b, x in zip(t["beacons_each"], t["text_each"]))
        assert t["per_sample_median"] == totals[0]  # the lower median of two
    assert json.loads((tmp_path / "step.json").read_text())["phases"]["compressed"]["pairs"] == 2
    text = docs.read_text()
    assert "old" not in text and "| uncompressed | 2 |" in text and "| compressed | 2 |" in text
