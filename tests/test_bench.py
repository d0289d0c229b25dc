"""vlc-bench: rows per compressor × frame count with the compressor's token counts, the docs table
block replaced in place, the max-frames search (pure logic, with a fake out-of-memory), and the
CUDA path (skipped cleanly without a GPU)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from vlc.evaluation.bench import (
    default_compressors,
    find_max_frames,
    main,
    variants,
    update_docs,
)
from vlc.run import CONFIG_DIR


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_two_compressors_two_frame_counts(tmp_path):
    out = tmp_path / "out"
    rows = main(["compressor=none,pool", "--frames", "2,4", "--no-warmup", "--out", str(out),
                 "--cache", str(tmp_path / "videos"), "--update-docs", str(tmp_path / "benchmarks.md"), "--table", "t"])
    assert len(rows) == 4
    on_disk = _rows(out / "bench.csv")
    assert [(r["compressor"], int(r["frames"])) for r in on_disk] == [
        ("none", 2), ("none", 4), ("pool", 2), ("pool", 4)]
    for r in on_disk:
        per_frame = {"none": 16, "pool": 4}[r["compressor"]]  # tiny: 4×4 patches; pool 2×2 → 2×2
        assert int(r["visual_tokens"]) == per_frame * int(r["frames"])
        assert int(r["kv_tokens"]) > int(r["visual_tokens"])  # + the prompt prefix
        assert r["status"] == "ok" and float(r["decode_ms"]) > 0 and float(r["prefill_ms"]) > 0
        assert float(r["peak_mem_mb"]) >= float(r["peak_delta_mb"]) and "thread" in r["device"]
    assert (tmp_path / "videos" / "haystack-4f-32px.mp4").is_file()  # decoded from a real mp4
    docs = (tmp_path / "benchmarks.md").read_text()
    assert docs.count("<!-- vlc-bench:t -->") == 1 and "| pool | 4 | 16 |" in docs


def test_update_docs_replaces_its_block_only(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("# Benchmarks\n\nintro\n\n<!-- vlc-bench:a -->\nold\n<!-- /vlc-bench:a -->\n\noutro\n")
    update_docs(path, "a", "new table")
    update_docs(path, "b", "other")
    update_docs(path, "b", "other again")
    text = path.read_text()
    assert "old" not in text and "<!-- vlc-bench:a -->\nnew table\n<!-- /vlc-bench:a -->" in text
    assert text.count("<!-- vlc-bench:b -->") == 1 and "other again" in text and "intro" in text and "outro" in text


def test_compressor_specs():
    names = default_compressors(CONFIG_DIR)
    assert "chain" not in names and {"none", "pool", "vst", "vst:ratio=4"} <= set(names)
    assert len(names) == len(list((CONFIG_DIR / "compressor").glob("*.yaml")))  # all but chain, + vst r4
    specs, shared = variants([], CONFIG_DIR)  # no compressor=: the defaults, vst at ratio 4 among them
    assert ("vst:ratio=4", ["compressor=vst", "compressor.ratio=4"]) in specs and shared == []
    assert len(specs) == len(names)


def _fake(limit: int):
    probes: list[int] = []

    def fits(n: int) -> bool:  # "runs out of memory" above limit frames
        probes.append(n)
        return n <= limit

    return fits, probes


def test_find_max_frames_grows_then_bisects():
    fits, probes = _fake(1000)
    assert find_max_frames(fits, 16) == (1000, 1001)
    assert probes[:7] == [16, 32, 64, 128, 256, 512, 1024]  # ×2 until the first failure
    assert len(probes) == 7 + 9  # then bisection of (512, 1024): log2(512) steps
    fits, probes = _fake(5)
    assert find_max_frames(fits, 16) == (5, 6) and probes[0] == 16  # even the start fails: bisect below it
    fits, _ = _fake(0)
    assert find_max_frames(fits, 4) == (0, 1)
    fits, probes = _fake(10**9)
    assert find_max_frames(fits, 16, cap=300) == (300, None) and probes == [16, 32, 64, 128, 256, 300]
    fits, _ = _fake(64)
    assert find_max_frames(fits, 16, cap=64) == (64, None)


def test_max_frames_on_cpu_end_to_end(tmp_path):
    rows = main(["compressor=pool", "--frames", "4", "--max-frames", "--frames-cap", "8", "--no-from-video",
                 "--no-warmup", "--mem-limit-gb", "64", "--out", str(tmp_path)])
    assert [r["frames"] for r in rows] == [4, 8]
    (summary,) = _rows(tmp_path / "max_frames.csv")
    assert summary["max_frames"] == "8" and summary["first_oom"] == ""  # all fitted up to the cap


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_request_without_cuda_fails_before_measuring(tmp_path):
    with pytest.raises(SystemExit, match="CUDA is not available on this machine"):
        main(["--device", "cuda", "compressor=none", "--frames", "2", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # nothing written


def test_variants_in_hydra_syntax():
    specs, shared = variants(["compressor=none,pool", "model.encoder.img_size=64", "compressor=vst",
                              "compressor.ratio=4", "compressor.window=32"], Path("configs"))
    assert specs == [("none", ["compressor=none"]), ("pool", ["compressor=pool"]),
                     ("vst:ratio=4,window=32", ["compressor=vst", "compressor.ratio=4", "compressor.window=32"])]
    assert shared == ["model.encoder.img_size=64"]
    with pytest.raises(ValueError, match="give compressor=NAME before its settings"):
        variants(["compressor.ratio=4"], Path("configs"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda(tmp_path):
    rows = main(["--device", "cuda", "compressor=none,vst", "--frames", "4,8", "--out", str(tmp_path)])
    assert [r["visual_tokens"] for r in rows] == [64, 128, 64, 128]
    assert all(r["peak_mem_mb"] > 0 and "thread" not in r["device"] for r in rows)
    rows = main(["--device", "cuda", "compressor=pool", "--frames", "4", "--max-frames", "--frames-cap", "16",
                 "--out", str(tmp_path / "max")])
    assert [r["frames"] for r in rows] == [4, 8, 16]


def test_scaling_against_none():
    from vlc.evaluation.bench import scaling

    def row(name, frames, delta):
        return dict(compressor=name, frames=frames, status="ok", peak_delta_mb=delta)

    rows = [row("none", 64, 10.0), row("none", 128, 30.0), row("none", 256, 90.0),
            row("vst", 64, 5.0), row("vst", 128, 6.0), row("vst", 256, 8.0), row("vst", 512, 12.0),
            dict(compressor="pool", frames=256, status="oom")]
    (r,) = scaling(rows)
    assert (r["compressor"], r["frames"], r["from_frames"]) == ("vst", 256, 128)  # the largest both ran
    assert r["peak_ratio"] == pytest.approx(8 / 90)
    assert r["slope_mb_per_frame"] == pytest.approx(2 / 128) and r["slope_ratio"] == pytest.approx(2 / 60)
    assert scaling([row("vst", 64, 1.0)]) == []  # no reference: nothing to compare
