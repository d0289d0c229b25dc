"""``scripts/gpu_check.py``: its FLOP counts against a hand count and torch's FLOP counter on the real
code, its max-frames search on fake memory, and its CPU dry run (every part, the same code path)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]


def _load():
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = _load()
TINY = dict(layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16)


def test_vst_prefill_flops_hand_count():
    # sink 2, then 10 raw tokens in windows of 4 at r = 2: windows (n, beacons, memory before) =
    # (2, 0, 0) the sink, (4, 2, 2), (4, 2, 4), (2, 1, 6); memory after: 2 + 2 + 2 + 1 = 7.
    # q_dim 8, kv_dim 4, per slot: k+v 2·8·2·4 = 128 (2 layers), q 2·8·8 = 128, o 128, MLP 6·8·16 = 768
    # (1 layer: the last stops after its KV); attention 4·8 = 32 per causal pair, pairs L·m + L(L+1)/2.
    f = gc.vst_prefill_flops(**TINY, sink=2, visual=10, window=4, ratio=2)
    slots = 2 + 6 + 6 + 3
    pairs = (0 + 3) + (6 * 2 + 21) + (6 * 4 + 21) + (3 * 6 + 6)  # 3 + 33 + 45 + 24 = 105
    dense = 2 * 2 + 6 * 8 + 6 * 10 + 3 * 9  # L · (m + L)
    assert f["kv_proj"] == 2 * 128 * slots == 4352
    assert f["q_proj"] == f["o_proj"] == 128 * slots == 2176
    assert f["mlp"] == 768 * slots == 13056
    assert f["attention"] == 32 * pairs == 3360
    assert f["attention_dense"] == 32 * dense == 4448
    assert f["total"] == 4352 + 2 * 2176 + 13056 + 3360 == 25120
    assert (f["memory"], f["windows"]) == (7, 3)


def test_vst_prefill_flops_window_carry():
    # window 5 at r = 2 takes 4 raw tokens a window (two whole beacon groups); the fifth waits.
    f = gc.vst_prefill_flops(**TINY, sink=0, visual=13, window=5, ratio=2)
    assert (f["windows"], f["memory"]) == (4, 2 + 2 + 2 + 1)  # 4, 4, 4 raw (5 left is a window: 4 go), then 1
    with pytest.raises(ValueError, match="ratio"):
        gc.vst_prefill_flops(**TINY, sink=0, visual=8, window=4, ratio=5)


def test_vst_prefill_flops_match_the_code(monkeypatch):
    """The count against vst's own prefill on the tiny model: torch's FLOP counter for every matmul
    (projections and MLP) and vst's attention calls, shape by shape, for the attention term."""
    import vlc.compressors.vst as vst
    from vlc.evaluation.bench import build, compose
    from vlc.run import CONFIG_DIR

    torch.manual_seed(0)
    model = build(compose(["compressor=vst", "compressor.window=160", "compressor.ratio=16"], CONFIG_DIR)).eval()
    p = model.pipeline
    llm, c = p.backbone.llm, p.compressor
    calls = []
    original = vst._attend

    def counted(q, k, v, *args):
        calls.append((q.shape[1], q.shape[2], k.shape[2], q.shape[3]))  # H, Lq, Lk, Dh
        return original(q, k, v, *args)

    monkeypatch.setattr(vst, "_attend", counted)
    S, visual = len(p.prompt.prefix_ids()), 400
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        chunks = [(torch.randn(1, visual, 128), torch.ones(1, visual))]
        ctx = c.prefill(llm, torch.randn(1, S, 128), torch.ones(1, S), chunks)
    f = gc.vst_prefill_flops(**gc.llm_geometry(llm.config), sink=S, visual=visual, window=c.window, ratio=c.ratio)
    assert counter.get_total_flops() == f["kv_proj"] + f["q_proj"] + f["o_proj"] + f["mlp"] == 182_747_136
    assert f["attention"] == sum(4 * H * Dh * (Lq * (Lk - Lq) + Lq * (Lq + 1) // 2) for H, Lq, Lk, Dh in calls)
    assert f["attention_dense"] == sum(4 * H * Dh * Lq * Lk for H, Lq, Lk, Dh in calls)
    assert f["memory"] == ctx.attention_mask.shape[1] == S + 10 + 10 + 5
    assert f["windows"] == len(c.last_windows) == 3


def test_encoder_flops_match_the_counter():
    from vlc.evaluation.bench import build, compose
    from vlc.run import CONFIG_DIR

    model = build(compose(["compressor=none"], CONFIG_DIR)).eval()
    back = model.backbone
    for block in back.encoder.model.blocks:
        block.attn.fused_attn = False  # the counter sees q·kᵀ and attn·v as matmuls, not a fused kernel
    pixels = torch.randint(0, 256, (1, 5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ft, _ = back.encode(pixels, torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5))
        back.project(ft)
    # patch conv 2·16·192·96, 3 blocks of 17 tokens at width 96 (MLP 384), projector 16 tokens 96→128→128
    block = 2 * 17 * 96 * 288 + 4 * 17 * 17 * 96 + 2 * 17 * 96 * 96 + 4 * 17 * 96 * 384
    per_frame = 2 * 16 * 192 * 96 + 3 * block + 16 * 2 * (96 * 128 + 128 * 128)
    assert gc.encoder_flops_per_frame(back) == per_frame == 13_120_640
    assert counter.get_total_flops() == 5 * per_frame


# ---------------------------------------------------------------------------------------------
# the search, on fake memory


class FakeGPU:
    """peak(n) = base + per_frame · n MiB; more than limit is out of memory; a probe takes n / rate s."""

    def __init__(self, base, per_frame, limit, rate=1e9):
        self.base, self.per_frame, self.limit, self.rate, self.now, self.probed = base, per_frame, limit, rate, 0.0, []

    def probe(self, n):
        from vlc.evaluation.bench import OutOfMemory

        self.probed.append(n)
        self.now += n / self.rate
        peak = self.base + self.per_frame * n
        if peak > self.limit:
            raise OutOfMemory(f"{n} frames")
        return peak

    def clock(self):
        return self.now


def test_search_brackets_the_limit_from_the_memory_line():
    gpu = FakeGPU(1000, 10, 20000)  # fits up to 1900 frames
    row = gc.search_max_frames(gpu.probe, 64, 8192, 64, 20000, 600, {}, clock=gpu.clock)
    # 64 and 256 give the line; 97% of its 1900 → 1792 fits; 1792 + 1792/8 = 2016 does not.
    assert gpu.probed == [64, 256, 1792, 2016]
    assert (row["max_frames"], row["first_oom"], row["stopped_by"]) == (1792, 2016, "out of memory")
    assert row["peak_mib"] == 1000 + 10 * 1792 and row["mib_per_frame"] == 10
    assert [p["peak_mib"] for p in row["probes"]] == [1640, 3560, 18920, None]


def test_search_starts_from_a_known_size():
    gpu = FakeGPU(1000, 10, 20000)
    row = gc.search_max_frames(gpu.probe, 64, 8192, 64, 20000, 600, {}, known={1024: (11240.0, 1.0)}, clock=gpu.clock)
    assert gpu.probed == [64, 1792, 2016]  # 64 and the known 1024 give the line at once
    assert row["probes"][0] == dict(frames=1024, peak_mib=11240.0, seconds=1.0, known=True)
    assert (row["max_frames"], row["first_oom"], row["line_frames"]) == (1792, 2016, 1900)


def test_search_stops_at_the_cap_and_bisects_a_wrong_line():
    gpu = FakeGPU(1000, 0.1, 20000)
    row = gc.search_max_frames(gpu.probe, 64, 8192, 64, 20000, 600, {}, clock=gpu.clock)
    assert gpu.probed == [64, 256, 8192] and row["stopped_by"] == "frame cap" and row["first_oom"] is None
    # memory that doubles from 1000 frames on (so 999 is the most): the line overshoots, the bracket is bisected
    gpu = FakeGPU(1000, 10, 20000)
    linear = gpu.probe
    gpu.probe = lambda n: linear(n) if n < 1000 else linear(n * 2)
    row = gc.search_max_frames(gpu.probe, 64, 8192, 64, 20000, 600, {}, clock=gpu.clock)
    assert gpu.probed[:3] == [64, 256, 1792 * 2]  # 1792 ran as 3584 frames: out of memory
    assert row["stopped_by"] == "out of memory" and row["max_frames"] < 1000 <= row["first_oom"]
    assert row["first_oom"] - row["max_frames"] <= max(64, row["max_frames"] // 8)


def test_search_fits_its_time_and_reports_nothing_fitting():
    gpu = FakeGPU(1000, 0.1, 20000, rate=100)  # n / 100 s a probe, 10 s in all
    row = gc.search_max_frames(gpu.probe, 64, 8192, 64, 20000, 10, {}, clock=gpu.clock)
    # after 64 (0.64 s), 256 would take 10.24 s as the square of the size: shrunk to 192 = 64·√(9.36/0.64)
    # rounded down to 64 frames; the cap would take 535 s (exponent 1.5 at least): shrunk to
    # 448 = 192·(7.44/1.92)^(1/1.5); then 339 is all the 2.96 s left allow, not above 448 + 64: stop
    assert gpu.probed == [64, 192, 448] and (row["max_frames"], row["stopped_by"]) == (448, "time")
    gpu = FakeGPU(30000, 1, 20000)
    row = gc.search_max_frames(gpu.probe, 64, 8192, 64, 20000, 600, {}, clock=gpu.clock)
    assert gpu.probed == [64] and (row["max_frames"], row["first_oom"], row["stopped_by"]) == (0, 64, "out of memory")


# ---------------------------------------------------------------------------------------------
# the dry run


def test_dry_run_every_part(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nkept above\n\n<!-- vlc-bench:gpu-check -->\nold rows\n"
                    "<!-- /vlc-bench:gpu-check -->\n\nkept below\n")
    report = gc.main(["--dry-run", "--out", str(tmp_path / "out"), "--update-docs", str(docs),
                      "--cache", str(tmp_path / "clips")])
    parts = report["parts"]
    assert report["exit_status"] == 0
    assert list(parts) == list(gc.RUN_ORDER)
    assert {k: p["status"] for k, p in parts.items()} == {k: "ok" for k in gc.RUN_ORDER}

    rows = parts["max_frames"]["rows"]
    assert [r["compressor"] for r in rows] == ["vst r16 (streaming)", "none", "pool", "moviechat"]
    for r in rows:  # tiny on CPU, no memory cap: 8, 4 × 8, then the 128-frame cap; vst starts from part 2's 64
        expected = [64, 8, 128] if r["compressor"] == gc.VST else [8, 32, 128]
        assert [p["frames"] for p in r["probes"]] == expected
        assert (r["max_frames"], r["stopped_by"]) == (128, "frame cap")
    assert rows[0]["probes"][0]["known"] and not rows[0]["probes"][1]["known"]

    pre = parts["prefill"]
    assert (pre["frames"], pre["visual_tokens"]) == (64, 64 * 16)
    assert pre["kv_tokens"] == pre["flops"]["memory"] == 4 + 64  # prefix + 1024 / 16 beacons
    assert pre["flops"]["windows"] == 7 and pre["prefill_tflops"] > 0

    step = parts["train_step"]
    assert step["tiny"] and step["frames"] == 8 and len(step["losses"]) == 2 and step["visual_tokens"] == 128

    att = parts["attention"]
    assert att["flash_available"] is False and "SDPA only" in att["note"] and att["sdpa_prefill_s"] > 0
    assert att["attend_shape"] == dict(heads=4, kv_heads=2, q_len=64 + 4, k_len=4 + 60 + 68, head_dim=32)

    dec = parts["decode"]
    assert [r["workers"] for r in dec["rows"]] == [0, 2] and [r["frames"] for r in dec["rows"]] == [16, 32]
    assert dec["encoder_frames_per_s"] > 0

    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert saved["parts"]["prefill"]["flops"] == pre["flops"]
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept above\n") and text.rstrip().endswith("kept below")
    assert "old rows" not in text and text.count("<!-- vlc-bench:gpu-check -->") == 1
    for title in ("**1. Most frames on one GPU**", "**2. vst r16 prefill of 64 frames**", "**3. One bf16 training step",
                  "**4. flash-attn against SDPA", "**5. Decoding against the encoder**"):
        assert title in text
    # re-rendered from the saved report, the block is replaced, not added
    gc.main(["--from-json", str(tmp_path / "out" / "gpu_check.json"), "--update-docs", str(docs)])
    assert docs.read_text() == text


def test_attention_compares_caches_and_logits_when_flash_is_there(monkeypatch):
    """The comparison branch, with a stand-in for flash_attn_func (exact bottom-right causal
    attention in plain PyTorch): the figures flash-attn would get, on the tiny model."""
    import vlc.compressors.vst as vst

    def reference(q, k, v, dropout_p, softmax_scale, causal):  # (b, L, H, Dh), as flash-attn takes them
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v))
        Lq, Lk = q.shape[2], k.shape[2]
        mask = torch.arange(Lk)[None] <= torch.arange(Lq)[:, None] + (Lk - Lq)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale).transpose(1, 2)

    monkeypatch.setattr(vst, "flash_attn_func", reference)
    plan = gc.Plan.make(gc.parse_args(["--dry-run"]))
    state, out = gc.State(model=gc.build_model(plan, plan.vst)), {}
    gc.part_attention(plan, state, out)
    assert out["flash_available"] and "note" not in out
    assert out["cache_max_abs_diff"] < 1e-5 and out["logits_max_abs_diff"] < 1e-4 < out["logits_max_abs"]
    assert out["flash_prefill_s"] > 0 and out["attend_speedup"] > 0
    assert state.model.compressor.attention == "auto"  # restored
    assert "flash-attn is" in "\n".join(gc._render_attention(out, {}))


def test_errors_and_time_outs_are_recorded_and_the_rest_runs(tmp_path, monkeypatch):
    def broken(plan, state, out):
        raise RuntimeError("a real error")

    monkeypatch.setitem(gc.PART_FUNCTIONS, "decode", broken)
    report = gc.main(["--dry-run", "--parts", "attention,5", "--budget", "attention=0.001", "--out", str(tmp_path),
                      "--no-docs", "--cache", str(tmp_path / "clips")])
    assert report["parts"]["attention"]["status"] == "timed out"
    assert report["parts"]["decode"] == dict(report["parts"]["decode"], status="error",
                                             error="RuntimeError: a real error")
    assert report["exit_status"] == 1
    assert "timed out after" in gc.render(report) and "failed: RuntimeError: a real error" in gc.render(report)


def test_device_command(capsys):
    gc.main(["--print-device-command"])
    text = capsys.readouterr().out
    for wheel in ("hydra-core==1.3.2", "omegaconf==2.3.0", "decord==0.6.0", "av==15.1.0",
                  "antlr4-python3-runtime==4.9.3"):
        assert wheel in text
    run = next(line for line in text.splitlines() if "scripts/gpu_check --out $OUT" in line)
    assert run == gc.DEVICE_RUN and len(run) < 2000 and ".whl/ copied along" in text
    assert gc.DEVICE_RUN in (ROOT / "docs" / "benchmarks.md").read_text()  # the page gives the same command
    # the wrapper the device runs: the carried wheels into /tmp/site, then this script
    wrapper = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check"), "--print-device-command"],
                             env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, check=True)
    assert wrapper.stdout == text
    assert "--target /tmp/site .whl/*.whl" in (ROOT / "scripts" / "gpu_check").read_text()


def test_time_box_keeps_an_outer_timer():
    import signal
    import time

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        with pytest.raises(gc.PartTimeout, match="part x: over its 0.01 s budget"):
            with gc.time_box(0.01, "part x"):
                time.sleep(1)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 28 < left <= 30 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_render_a_gpu_report():
    """What the GPU run writes, from a report shaped as it returns one (figures made up)."""
    flops = gc.vst_prefill_flops(layers=28, hidden=3584, heads=28, kv_heads=4, head_dim=128, intermediate=18944,
                                 sink=4, visual=2048 * 144, window=1440, ratio=16)
    assert (flops["windows"], flops["memory"]) == (205, 4 + 204 * 90 + 72)
    report = {
        "command": "python scripts/gpu_check.py --out /x", "date": "2026-12-02", "seconds": 400.0,
        "environment": {"model": "videoxl_7b_random (random bf16 weights)", "precision": "bf16-mixed",
                        "device": "NVIDIA H200", "card_gib": 139.8, "torch": "2.11.0", "transformers": "5.17.0",
                        "memory_cap": "allocator capped at 79 GiB: set_per_process_memory_fraction(0.5651)"},
        "parts": {
            "max_frames": {"status": "ok", "seconds": 175.0, "limit_gib": 79.0, "card_gib": 139.8, "start": 128,
                           "cap": 8192, "step": 64, "rows": [
                               {"compressor": gc.VST, "max_frames": 3904, "first_oom": None, "peak_mib": 30000.0,
                                "mib_per_frame": 0.9, "line_frames": 60000, "stopped_by": "time", "probes": [
                                    {"frames": 2048, "peak_mib": 28000.0, "seconds": 20.0, "known": True},
                                    {"frames": 128, "peak_mib": 26000.0, "seconds": 1.0, "known": False},
                                    {"frames": 3904, "peak_mib": 30000.0, "seconds": 38.0, "known": False}]},
                               {"compressor": "none", "max_frames": 1792, "first_oom": 2016, "peak_mib": 78000.0,
                                "mib_per_frame": 33.0, "line_frames": 1850, "stopped_by": "out of memory", "probes": [
                                    {"frames": 128, "peak_mib": 20000.0, "seconds": 1.0, "known": False},
                                    {"frames": 2016, "peak_mib": None, "seconds": 30.0, "known": False}]}]},
            "prefill": {"status": "ok", "seconds": 25.0, "frames": 2048, "visual_tokens": 294912, "kv_tokens": 18436,
                        "encoder_s": 4.0, "prefill_s": 15.0, "context_s": 19.0, "peak_mib": 28000.0, "flops": flops,
                        "encoder_flops": 7.5e14, "spec_tflops": 989.4, "matmul_tflops": 780.0, "matmul_size": 8192,
                        "prefill_tflops": flops["total"] / 15.0 / 1e12, "encoder_tflops": 187.5, "window": 1440,
                        "ratio": 16},
            "train_step": {"status": "out of memory", "seconds": 50.0, "frames": 128,
                           "error": "OutOfMemoryError: CUDA out of memory"},
            "attention": {"status": "ok", "seconds": 12.0, "flash_available": True, "frames": 256,
                          "attend_for_frames": 2048, "dtype": "bfloat16",
                          "attend_shape": {"heads": 28, "kv_heads": 4, "q_len": 1224, "k_len": 19656, "head_dim": 128},
                          "sdpa_prefill_s": 2.0, "flash_prefill_s": 1.6, "sdpa_attend_ms": 3.0, "flash_attend_ms": 1.0,
                          "sdpa_attend_tflops": 100.0, "flash_attend_tflops": 300.0, "cache_max_abs_diff": 0.0156,
                          "logits_max_abs_diff": 0.03, "logits_max_abs": 12.0, "prefill_speedup": 1.25,
                          "attend_speedup": 3.0},
            "decode": {"status": "ok", "seconds": 30.0, "clip": "60 s 720p", "frames": 128, "size": 336,
                       "backend": "decord", "precision": "bf16-mixed", "device": "cuda", "encoder_frames_per_s": 900.0,
                       "rows": [{"workers": 0, "samples": 2, "frames": 256, "seconds": 6.0, "frames_per_s": 42.7},
                                {"workers": 8, "samples": 16, "frames": 2048, "seconds": 8.0, "frames_per_s": 256.0}]},
        },
    }
    text = gc.render(report)
    assert "NVIDIA H200 (139.8 GiB; allocator capped at 79 GiB" in text
    assert "| vst r16 (streaming) | ≥ 3,904 | – | 29.3 | 0.90 | ≈ 60,000 frames | fit, 27.3 GiB | time |" in text
    assert "2048: 27.3 (20.0, part 2)" in text
    assert "| none | 1,792 | 2,016 | 76.2 | 33.00 | ≈ 1,850 frames | out of memory | out of memory |" in text
    assert "**2. vst r16 prefill of 2,048 frames**" in text and "% of 989.4 (datasheet)" in text
    assert "**3. One bf16 training step, vst, 128 frames, gradient checkpointing** (50 s)\n\n" \
           "*out of memory: OutOfMemoryError: CUDA out of memory*" in text
    assert "flash-attn is 1.25× SDPA's speed on the prefill and 3.00× on the attention call" in text
    assert "| decoding | 8 | 16 | 256 | 0.284 |" in text and "decoding is the slower of the two" in text
