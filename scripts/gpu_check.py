"""One GPU check of Video-XL's claims against vlc, in one command well under 10 minutes on one H100/H200.

    python scripts/gpu_check.py                          # every part, 7B geometry, CUDA; rows into docs/benchmarks.md
    python scripts/gpu_check.py --dry-run                # the same code path on CPU: model=tiny, small frame counts
    python scripts/gpu_check.py --parts 2,4 --out DIR    # some parts; DIR/gpu_check.json and DIR/gpu_check.md
    python scripts/gpu_check.py --from-json A.json [B.json]   # render saved parts into docs/benchmarks.md
    python scripts/gpu_check.py --print-device-command   # running it on a GPU machine without a package index
    scripts/gpu_check --out DIR                          # the same, after installing wheels carried in .whl/

The parts (numbered as docs/benchmarks.md numbers them; they run in the order 2, 4, 1, 5, 3 so one
7B model built with vst r16 serves the first four):

1. ``max_frames``: the most frames one GPU holds with the 7B geometry (``model=videoxl_7b_random``,
   random bf16 weights) for none, pool, vst r16 (streaming) and moviechat, with the peak memory and
   its growth per frame, against Video-XL's 2048 frames on 80 GB. On a card larger than 80 GB the
   caching allocator is capped (``torch.cuda.set_per_process_memory_fraction``, ``--memory-gib``), so
   a size that would not fit an 80 GB card fails with a real CUDA out-of-memory error: "fits" is
   measured, not extrapolated. The search (``search_max_frames``) is guided by the memory slope of the
   probes so far and time-boxed per compressor; where time or the frame cap stops it first, the row
   says so.
2. ``prefill``: vst r16 prefill of 2048 frames: seconds (encoder + projector, windowed LLM pass) and
   achieved TFLOP/s against the card's bf16 peak (the datasheet's and a measured matmul's), with the
   FLOP count of the windowed pass (``vst_prefill_flops``) written out.
3. ``train_step``: one bf16 training step of the 7B geometry with vst, 128 frames, gradient
   checkpointing (``scripts/train_step_7b.py``'s code path, called in this process).
4. ``attention``: flash-attn against SDPA for vst's windowed attention in bf16: max abs difference of
   the cache and of the logits, and the speed ratio (whole prefill, and the attention call alone at
   the 2048-frame prefill's last window). Without flash_attn: SDPA only, and the row says so.
5. ``decode``: frames/s of the data loader decoding a 60 s 720p clip at the encoder's 336 px with 0,
   4 and 8 workers, against the encoder's frames/s (CLIP-L/336, bf16, on the GPU).

Frames come from ``NoiseClip``: random pixels handed out a range at a time as a lazily decoded clip
is (``data.lazy_decode``), so streaming vst holds one window of pixels on the GPU and every other
compressor the whole clip, with no codec in the way (part 5 measures decoding).

Each part has a time budget (``--budget PART=SECONDS``); one that runs over is recorded as timed out
and the script goes on. Progress lines carry the elapsed time. The exit status is 1 only when a part
fails with a real error (an exception other than out-of-memory or its time running out).

``--dry-run`` runs every part on CPU with the tiny geometry (small frame counts, the same functions)
in well under a minute; ``tests/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
TABLE = "gpu-check"  # docs/benchmarks.md block <!-- vlc-bench:gpu-check --> … <!-- /vlc-bench:gpu-check -->
PARTS = {1: "max_frames", 2: "prefill", 3: "train_step", 4: "attention", 5: "decode"}
RUN_ORDER = ("prefill", "attention", "max_frames", "decode", "train_step")
# Seconds per part; with the imports and the wheels' install the whole run stays under 9 minutes.
BUDGETS_S = {"build": 60, "prefill": 60, "attention": 30, "max_frames": 180, "decode": 45, "train_step": 110}
VST = "vst r16 (streaming)"
# Part 1's compressors and their shares of its time (what one leaves goes to the next).
MAX_FRAMES_MIX = ((VST, 0.3), ("none", 0.3), ("pool", 0.25), ("moviechat", 0.15))
TITLES = {
    "max_frames": "Most frames on one GPU",
    "prefill": "vst r{ratio} prefill of {frames} frames",
    "train_step": "One bf16 training step, vst, {frames} frames, gradient checkpointing",
    "attention": "flash-attn against SDPA for vst's windowed attention",
    "decode": "Decoding against the encoder",
}
VIDEO_XL_FRAMES = 2048  # Video-XL: 2048 frames on one 80 GB GPU (vst r16, every frame encoded first)
VIDEO_XL2_PREFILL_S = 12.0  # Video-XL-2: about 12 s to prefill 2048 frames
# Dense bf16 tensor-core peaks from the vendor's datasheets (no sparsity), by device name.
BF16_PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H800", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L4", 121.0))


# ---------------------------------------------------------------------------------------------
# what runs where


@dataclass
class Plan:
    """Everything that differs between the GPU run and the CPU dry run; the code path is the same."""

    dry_run: bool
    device: torch.device
    precision: str
    shared: list[str]  # Hydra overrides every model of parts 1, 2, 4, 5 gets
    vst: list[str]  # vst r16
    compressors: list[tuple[str, list[str], float]]  # part 1: (label, overrides, share of the part's time)
    memory_gib: float | None  # the allocator cap (None: the card's own memory, or CPU)
    prefill_frames: int
    warmup_frames: int
    search: dict[str, int]  # part 1: start, cap, step (frames)
    attention_frames: int
    train_args: list[str]
    clip: dict[str, Any]  # part 5: seconds, height, width, frames per sample, workers
    encoder_frames: int
    cache: Path
    backend: str = "decord"  # part 5's decoder: the data configs' default
    budgets: dict[str, float] = field(default_factory=lambda: dict(BUDGETS_S))

    @staticmethod
    def make(args: argparse.Namespace) -> Plan:
        vst = ["compressor=vst", "compressor.ratio=16"]
        if args.dry_run:
            vst.append("compressor.window=160")  # 10 frames of 16 tokens, as experiment=vst_ratio16 on model=tiny
            plan = Plan(
                dry_run=True, device=torch.device("cpu"), precision="32-true", shared=["model=tiny"], vst=vst,
                compressors=[], memory_gib=None, prefill_frames=64, warmup_frames=8,
                search=dict(start=8, cap=args.frames_cap or 128, step=8), attention_frames=32,
                train_args=["--tiny", "--frames", "8", "--steps", "2"],
                clip=dict(seconds=2.0, height=144, width=256, frames=8, workers=[0, 2]), encoder_frames=32,
                cache=args.cache or Path("/tmp/vlc-gpu-check-dry"))
        else:
            plan = Plan(
                dry_run=False, device=torch.device("cuda"), precision="bf16-mixed",
                shared=["model=videoxl_7b_random"], vst=vst, compressors=[], memory_gib=args.memory_gib or None,
                prefill_frames=2048, warmup_frames=64, search=dict(start=128, cap=args.frames_cap or 8192, step=64),
                attention_frames=256, train_args=["--frames", "128", "--steps", "3"],
                clip=dict(seconds=60.0, height=720, width=1280, frames=128, workers=[0, 4, 8]), encoder_frames=256,
                cache=args.cache or Path("/tmp/vlc-gpu-check"))
        by_name = {VST: vst, "none": ["compressor=none"], "pool": ["compressor=pool"],
                   "moviechat": ["compressor=moviechat"]}
        plan.compressors = [(name, by_name[name], share) for name, share in MAX_FRAMES_MIX]
        for item in args.budget:
            part, _, seconds = item.partition("=")
            if part not in plan.budgets or not seconds:
                raise SystemExit(f"gpu_check --budget {item}: expected PART=SECONDS with PART one of "
                                 f"{', '.join(plan.budgets)}")
            plan.budgets[part] = float(seconds)
        return plan


# ---------------------------------------------------------------------------------------------
# progress and time boxes


_START = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - _START:6.1f} s] {message}", flush=True)


class PartTimeout(BaseException):
    """A part ran past its budget. A BaseException, like KeyboardInterrupt, so that no ``except
    Exception`` on the way (Lightning's, a measurement's) mistakes it for an error of its own."""


@contextlib.contextmanager
def time_box(seconds: float | None, what: str):
    """Raise PartTimeout in this (main) thread once ``seconds`` have passed."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum, frame):
        raise PartTimeout(f"{what}: over its {seconds:g} s budget")

    previous = signal.signal(signal.SIGALRM, expired)
    outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # a timer set before (a test runner's time-out) keeps what was left of it
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer - (time.monotonic() - start)), interval)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Give freed CUDA memory back before a probe, so the allocator cap sees only what is live. (On
    CPU the figure is the process high-water mark, which garbage does not raise: nothing to do.)"""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# FLOP counts (a multiply-add is 2 FLOPs; norms, RoPE, softmax and biases are not counted)


def llm_geometry(config) -> dict[str, int]:
    """The shapes ``vst_prefill_flops`` needs, from a Llama-family Hugging Face config."""
    heads = int(config.num_attention_heads)
    return dict(layers=int(config.num_hidden_layers), hidden=int(config.hidden_size), heads=heads,
                kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
                head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
                intermediate=int(config.intermediate_size))


def vst_prefill_flops(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                      sink: int, visual: int, window: int, ratio: int) -> dict[str, int]:
    """FLOPs of vst's windowed prefill of ``sink`` prefix tokens and ``visual`` raw tokens.

    The windows are vst's own (``VisualSummarizationTokens._run_full_windows``): the prefix runs
    first with no beacons and is kept whole; then, while ``window`` raw tokens are waiting, a window
    takes ``window // ratio * ratio`` of them plus one beacon per ``ratio``; the rest is the last
    window, with ceil(rest / ratio) beacons. A window of L = n raw + nb beacon slots after m memory
    entries (prefix + earlier beacons) costs, per decoder layer:

        k and v projections   2 · L · hidden · 2 · kv_heads · head_dim   (every layer: its KV is kept)
        q projection          2 · L · hidden · heads · head_dim          (all layers but the last,
        o projection          2 · L · heads · head_dim · hidden           whose output nothing reads:
        MLP (gate, up, down)  3 · 2 · L · hidden · intermediate           vst stops after its KV)
        attention (QKᵀ, AV)   2 · 2 · heads · head_dim · (L·m + L·(L+1)/2)

    Raw slots and beacons cost the same (beacons have their own q/k/v projections of the same shape).
    ``attention`` counts the causal pairs only (slot i of the window sees m + i + 1 keys, bottom-right
    aligned); ``attention_dense`` is the full L × (m + L) product, what SDPA computes with vst's
    explicit mask. ``total`` uses the causal count. ``memory`` is the cache length after the prefill
    (prefix + every beacon), ``windows`` the number of visual windows.
    """
    if window < 1 or not 1 <= ratio <= window:
        raise ValueError(f"vst_prefill_flops: window={window}, ratio={ratio}; need 1 <= ratio <= window")
    q_dim, kv_dim, full = heads * head_dim, kv_heads * head_dim, layers - 1
    out = dict(kv_proj=0, q_proj=0, o_proj=0, mlp=0, attention=0, attention_dense=0)

    def run(n: int, beacons: int, m: int) -> int:
        L = n + beacons
        out["kv_proj"] += layers * 2 * L * hidden * 2 * kv_dim
        out["q_proj"] += full * 2 * L * hidden * q_dim
        out["o_proj"] += full * 2 * L * q_dim * hidden
        out["mlp"] += full * 3 * 2 * L * hidden * intermediate
        out["attention"] += full * 4 * q_dim * (L * m + L * (L + 1) // 2)
        out["attention_dense"] += full * 4 * q_dim * L * (m + L)
        return m + (beacons if beacons else L)  # raw KV of a compressed window is dropped

    memory, windows = run(sink, 0, 0) if sink else 0, 0
    left, take = visual, window // ratio * ratio
    while left >= window:
        memory, left, windows = run(take, take // ratio, memory), left - take, windows + 1
    if left:
        memory, windows = run(left, -(-left // ratio), memory), windows + 1
    out["total"] = sum(out[k] for k in ("kv_proj", "q_proj", "o_proj", "mlp", "attention"))
    out.update(memory=memory, windows=windows)
    return out


def encoder_flops_per_frame(backbone) -> int:
    """FLOPs of one frame through the timm ViT (patch embedding and the blocks vlc keeps) and the MLP
    projector on the frame's pooled tokens: per block 2·T·D·3D (qkv) + 4·T²·D (attention) + 2·T·D²
    (proj) + 2·2·T·D·D_mlp (MLP), T tokens (patches + CLS) of width D."""
    vit = backbone.encoder.model
    proj = vit.patch_embed.proj
    patches = int(vit.patch_embed.num_patches)
    T, D = patches + int(getattr(vit, "num_prefix_tokens", 0)), int(vit.embed_dim)
    patch = 2 * patches * proj.in_channels * math.prod(proj.kernel_size) * proj.out_channels
    blocks = sum(2 * T * D * 3 * D + 4 * T * T * D + 2 * T * D * D + 4 * T * D * b.mlp.fc1.out_features
                 for b in vit.blocks)
    linears = [m for m in backbone.projector.modules() if isinstance(m, torch.nn.Linear)]
    projector = backbone.tokens_per_frame * sum(2 * m.in_features * m.out_features for m in linears)
    return patch + blocks + projector


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    """(device name, its datasheet dense bf16 TFLOP/s or None)."""
    from vlc.evaluation.efficiency import device_name

    name = device_name(device)
    return name, next((tf for key, tf in BF16_PEAK_TFLOPS if key in name), None) if device.type == "cuda" else None


def matmul_tflops(device: torch.device) -> tuple[float, int]:
    """What a plain square matmul reaches here: bf16 8192³ on CUDA (3 warm-ups, mean of 10), float32 512³ on CPU."""
    n, dtype, reps = (8192, torch.bfloat16, 10) if device.type == "cuda" else (512, torch.float32, 3)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12, n


# ---------------------------------------------------------------------------------------------
# inputs and one measurement


class NoiseClip:
    """N frames of random pixels, handed out a range at a time the way ``LazyClip`` decodes them:
    ``LazyFrames`` over it keeps the clip off the GPU, so a streaming compressor holds one window of
    pixels and every other one the whole clip, as with ``data.lazy_decode``. The frames cycle through
    a bank of 16 (what they show changes nothing a compressor costs)."""

    def __init__(self, frames: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.bank = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8, generator=g)
        self.frames, self.frame_hw, self.decode_seconds = frames, (size, size), 0.0

    def __len__(self) -> int:
        return self.frames

    def decode(self, t0: int, t1: int) -> torch.Tensor:  # (n, 3, S, S) uint8
        t0, t1 = max(0, t0), min(self.frames, t1)
        return self.bank[torch.arange(t0, t1) % len(self.bank)]


def noise_batch(frames: int, size: int, device: torch.device) -> dict:
    """One evaluation sample of ``frames`` NoiseClip frames, with vlc-bench's question and options."""
    from vlc.data.video import LazyFrames
    from vlc.evaluation.bench import load_sample
    from vlc.evaluation.efficiency import to_device

    batch = load_sample(1, size, None)  # the text fields of a vlc-bench sample
    batch.update(pixels=LazyFrames([NoiseClip(frames, size)]), frame_mask=torch.ones(1, frames, dtype=torch.bool),
                 times=torch.arange(frames, dtype=torch.float32)[None] / 4)
    return to_device(batch, device)


def measure_sample(model, frames: int, plan: Plan) -> dict[str, Any]:
    """The context of one ``frames``-frame sample (``measure_context``, as evaluation measures it):
    tokens, seconds and peak memory; ``OutOfMemory`` when it does not fit."""
    from vlc.evaluation.bench import OutOfMemory, is_oom
    from vlc.evaluation.efficiency import autocast, measure_context

    free(plan.device)
    ctx = None
    try:
        batch = noise_batch(frames, model.backbone.encoder.img_size, plan.device)
        with torch.no_grad(), autocast(plan.device, plan.precision):
            ctx, cost = measure_context(model.pipeline, batch)
    except Exception as error:  # noqa: BLE001 - only out-of-memory is expected
        if is_oom(error):
            raise OutOfMemory(f"{frames} frames: {str(error).splitlines()[0][:160]}") from None
        raise
    finally:
        del ctx
    return dict(frames=frames, visual_tokens=int(cost["visual_tokens"][0]), kv_tokens=int(cost["kv_tokens"][0]),
                kv_bytes=int(cost["kv_bytes"][0]), encoder_s=cost["encoder_ms"] / 1000,
                prefill_s=cost["prefill_ms"] / 1000, context_s=cost["context_ms"] / 1000,
                base_mib=cost["base_mem_mb"], peak_mib=cost["peak_mem_mb"])


def build_model(plan: Plan, overrides: list[str]):
    """The eval-mode VideoLLM of ``overrides`` (configs/eval.yaml, random init), its weights made on
    the device (the 7B's random init takes seconds there, minutes on the CPU); if that fails, made on
    the CPU and moved."""
    from vlc.evaluation.bench import build, compose
    from vlc.run import CONFIG_DIR

    cfg = compose([*plan.shared, *overrides], CONFIG_DIR)
    torch.manual_seed(0)
    if plan.device.type == "cpu":
        return build(cfg).eval()
    try:
        with torch.device(plan.device):
            return build(cfg).eval()
    except Exception as error:  # noqa: BLE001 - the slower way still measures the same model
        say(f"building on {plan.device} failed ({type(error).__name__}: {str(error)[:200]}); on the CPU, then moved")
    free(plan.device)
    torch.manual_seed(0)
    return build(cfg).eval().to(plan.device)


def set_compressor(model, plan: Plan, overrides: list[str]) -> None:
    """Swap the model's compressor for the one ``overrides`` configure, bound to the same backbone
    (what ``VideoLLM`` does at construction), so one 7B backbone serves every compressor."""
    from omegaconf import OmegaConf

    from vlc.compressors.base import build_compressor, placement
    from vlc.evaluation.bench import compose
    from vlc.run import CONFIG_DIR

    cfg = OmegaConf.to_container(compose([*plan.shared, *overrides], CONFIG_DIR).compressor, resolve=True)
    back = model.backbone
    sits = placement(cfg)
    facts = dict(out_dim=back.hidden_size) if sits == "projector" else {}
    model.pipeline.compressor = None
    free(plan.device)
    with torch.device(plan.device):
        made = build_compressor(cfg, dim=back.hidden_size if sits == "projected" else back.vision_dim,
                                pixel_std=back.pixel_std, question_dim=back.hidden_size, **facts)
        made.bind(back.llm, back.tokenizer)
    model.pipeline.compressor = made.to(plan.device).eval()


# ---------------------------------------------------------------------------------------------
# part 1's search


def search_max_frames(probe: Callable[[int], float], start: int, cap: int, step: int, limit_mib: float | None,
                      seconds: float, row: dict, known: dict[int, tuple[float, float]] | None = None,
                      clock: Callable[[], float] = time.perf_counter, resolution: int = 8) -> dict:
    """The largest frame count ``probe`` fits, to within max(step, 1/resolution of it), in ``seconds``.

    ``probe(n)`` returns the peak MiB of n frames or raises ``OutOfMemory``; ``known`` holds sizes
    measured before ({frames: (peak MiB, seconds)}, e.g. part 2's 2048 frames). The first probes are
    ``start`` and 4× the largest fit; then the two largest fits give the memory per frame, and the
    next probe is 97% of where that line reaches ``limit_mib`` (rounded down to ``step``), or ``cap``.
    When the line puts the limit just above the largest fit, the probe one resolution above it closes
    the bracket; a bracket the line cannot place is bisected. Before each probe its time is estimated
    from the two largest fits (a power law whose exponent is held between 1.5 and 2: prefill
    attention grows quadratically); a probe that would overrun the time left is shrunk to what the
    time allows, or the search stops.

    Fills and returns ``row``: ``max_frames`` (largest n that fitted, 0: none), ``first_oom`` (the
    smallest that did not, None: none failed), ``peak_mib`` at max_frames, ``mib_per_frame``
    (between the two largest fits), ``line_frames`` (where that line reaches ``limit_mib``: an
    extrapolation), ``stopped_by`` ("out of memory": bracketed; "frame cap"; "time"), ``probes``
    [{frames, peak_mib (None: out of memory), seconds, known}].
    """
    from vlc.evaluation.bench import OutOfMemory

    deadline = clock() + seconds
    fitted: dict[int, tuple[float, float]] = dict(known or {})  # frames → (peak MiB, seconds)
    failed: set[int] = set()
    row.update(max_frames=max(fitted, default=0), first_oom=None, peak_mib=None, mib_per_frame=None,
               line_frames=None, stopped_by=None,
               probes=[dict(frames=k, peak_mib=p, seconds=t, known=True) for k, (p, t) in sorted(fitted.items())])

    def floor(x: float) -> int:
        return max(step, int(x) // step * step)

    def largest_two() -> tuple[int, int]:
        sizes = sorted(fitted)
        return (sizes[-2], sizes[-1]) if len(sizes) > 1 else (sizes[-1], sizes[-1])

    def exponent() -> float:
        (n1, n2), (t1, t2) = largest_two(), (fitted[k][1] for k in largest_two())
        e = math.log(t2 / t1) / math.log(n2 / n1) if n2 > n1 and t1 > 0 and t2 > 0 else 2.0
        return min(2.0, max(1.5, e))

    def slope() -> float | None:
        n1, n2 = largest_two()
        return (fitted[n2][0] - fitted[n1][0]) / (n2 - n1) if n2 > n1 else None

    def next_size() -> tuple[int | None, str | None]:
        lo, hi = max(fitted, default=0), min(failed, default=None)
        gap = max(step, lo // resolution)
        if hi is not None and hi - lo <= gap:
            return None, "out of memory"
        if lo >= cap:
            return None, "frame cap"
        if start not in fitted and start not in failed and (hi is None or start < hi):
            return start, None
        if not lo:  # even the first size failed: halve it
            n = floor(hi / 2)
            return (n, None) if hi > step and n < hi else (None, "out of memory")
        if len(fitted) < 2 and hi is None:
            return min(cap, 4 * lo), None
        guess, s = math.inf, slope()
        if s and s > 0 and limit_mib:
            guess = 0.97 * (lo + (limit_mib - fitted[lo][0]) / s)
        high = cap if hi is None else hi - gap  # the largest probe that can still tell something
        if guess > high:  # no limit in sight below the cap; or past an out-of-memory size: bisect
            return (cap if hi is None else max(lo + step, floor((lo + hi) / 2))), None
        if guess > lo + gap:
            return floor(guess), None
        return min(cap, lo + gap), None  # the line puts the limit just above lo: close the bracket

    while True:
        n, row["stopped_by"] = next_size()
        if n is None:
            break
        left = deadline - clock()
        if fitted:
            n2, e = max(fitted), exponent()
            if fitted[n2][1] * (n / n2) ** e > left:  # shrink to what the time left allows, if that still tells us
                affordable = floor(n2 * (left / max(fitted[n2][1], 1e-9)) ** (1 / e)) if left > 0 else 0
                if affordable <= n2 + max(step, n2 // resolution):
                    row["stopped_by"] = "time"
                    break
                n = min(n, affordable)
        t0 = clock()
        try:
            fitted[n] = (probe(n), clock() - t0)
            row["probes"].append(dict(frames=n, peak_mib=fitted[n][0], seconds=fitted[n][1], known=False))
        except OutOfMemory:
            failed.add(n)
            row["probes"].append(dict(frames=n, peak_mib=None, seconds=clock() - t0, known=False))
        lo, s = max(fitted, default=0), slope() if fitted else None
        row.update(max_frames=lo, first_oom=min(failed, default=None), peak_mib=fitted[lo][0] if lo else None,
                   mib_per_frame=s,
                   line_frames=int(lo + (limit_mib - fitted[lo][0]) / s) if lo and s and s > 0 and limit_mib else None)
    return row


# ---------------------------------------------------------------------------------------------
# the parts; each fills ``out`` as it goes, so a part cut off by its budget keeps what it measured


@dataclass
class State:
    model: Any = None
    clip_job: subprocess.Popen | None = None
    clip_path: Path | None = None
    known: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)  # part 1's sizes measured before


def part_prefill(plan: Plan, state: State, out: dict) -> None:
    model, frames = state.model, plan.prefill_frames
    out.update(frames=frames, ratio=model.compressor.ratio)
    say(f"prefill: warm-up ({plan.warmup_frames} frames)")
    measure_sample(model, plan.warmup_frames, plan)
    say(f"prefill: vst r16, {frames} frames")
    row = measure_sample(model, frames, plan)
    state.known[VST] = {frames: (row["peak_mib"], row["context_s"])}  # part 1 starts from it
    c = model.compressor
    flops = vst_prefill_flops(**llm_geometry(model.backbone.llm.config), sink=len(model.pipeline.prompt.prefix_ids()),
                              visual=row["visual_tokens"], window=c.window, ratio=c.ratio)
    encoder = encoder_flops_per_frame(model.backbone) * frames
    name, spec = peak_tflops(plan.device)
    measured, size = matmul_tflops(plan.device)
    out.update(row, flops=flops, encoder_flops=encoder, device=name, spec_tflops=spec, matmul_tflops=measured,
               matmul_size=size,
               prefill_tflops=flops["total"] / row["prefill_s"] / 1e12,
               encoder_tflops=encoder / row["encoder_s"] / 1e12, window=c.window, ratio=c.ratio)
    say(f"prefill: {row['context_s']:.2f} s ({row['encoder_s']:.2f} encoder + {row['prefill_s']:.2f} windowed pass), "
        f"{_rate(out['prefill_tflops'])} TFLOP/s (matmul {_rate(measured)}, datasheet {_rate(spec)}); "
        f"KV {row['kv_tokens']} tokens (formula {flops['memory']})")


def _context_and_logits(model, frames: int, plan: Plan) -> tuple[float, list[torch.Tensor], torch.Tensor]:
    """Prefill seconds, the cache (K and V of every layer) and the question's logits after it."""
    from vlc.evaluation.efficiency import autocast, measure_context
    from vlc.model.prefill import continue_from
    from vlc.tokens import iter_cache_layers

    batch = noise_batch(frames, model.backbone.encoder.img_size, plan.device)
    p = model.pipeline
    with torch.no_grad(), autocast(plan.device, plan.precision):
        ctx, cost = measure_context(p, batch)
        cache = [t.clone() for kv in iter_cache_layers(ctx.cache) for t in kv]
        q = p.prompt.question_batch(batch["questions"], batch["candidates"])
        logits = continue_from(p.backbone.llm, ctx, p.embed(q.ids), q.mask.to(plan.device)).float()
    return cost["prefill_ms"] / 1000, cache, logits


def _attend_seconds(attention: str, shape: tuple[int, int, int, int, int], dtype, device, repeats: int = 5) -> float:
    """Median seconds of vst's ``_attend`` on q (1, H, Lq, Dh), k/v (1, Hkv, Lk, Dh)."""
    from vlc.compressors.vst import _attend

    H, Hkv, Lq, Lk, Dh = shape
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, H, Lq, Dh, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(1, Hkv, Lk, Dh, device=device, dtype=dtype, generator=g) for _ in range(2))
    _attend(q, k, v, Dh**-0.5, 0.0, attention)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        _attend(q, k, v, Dh**-0.5, 0.0, attention)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def part_attention(plan: Plan, state: State, out: dict) -> None:
    import vlc.compressors.vst as vst_module

    model, frames = state.model, plan.attention_frames
    c, g = model.compressor, llm_geometry(model.backbone.llm.config)
    flash = vst_module.flash_attn_func is not None
    # The attention call of the 2048-frame prefill's last window: its slots after the prefix and
    # every earlier beacon.
    sink = len(model.pipeline.prompt.prefix_ids())
    tokens = plan.prefill_frames * model.backbone.tokens_per_frame
    full = vst_prefill_flops(**g, sink=sink, visual=tokens, window=c.window, ratio=c.ratio)
    rest = tokens - (full["windows"] - 1) * (c.window // c.ratio * c.ratio)
    Lq = rest + -(-rest // c.ratio)
    Lk = full["memory"] - -(-rest // c.ratio) + Lq
    shape = (g["heads"], g["kv_heads"], Lq, Lk, g["head_dim"])
    pairs = Lq * (Lk - Lq) + Lq * (Lq + 1) // 2
    dtype = model.backbone.llm.get_input_embeddings().weight.dtype
    out.update(flash_available=flash, frames=frames, attend_shape=dict(zip(("heads", "kv_heads", "q_len", "k_len",
                                                                            "head_dim"), shape)),
               dtype=str(dtype).replace("torch.", ""), attend_for_frames=plan.prefill_frames)
    original = c.attention
    modes = ("sdpa", "flash") if flash else ("sdpa",)
    try:
        runs: dict[str, list] = {m: [] for m in modes}
        for r in range(3 if not plan.dry_run else 2):  # interleaved: sdpa, flash, sdpa, flash, …
            for mode in modes:
                c.attention = mode
                seconds, cache, logits = _context_and_logits(model, frames, plan)
                runs[mode].append((seconds, cache, logits) if r == 0 else (seconds, None, None))
                say(f"attention: {mode} prefill of {frames} frames, run {r + 1}: {seconds:.3f} s")
        for mode in modes:
            seconds = _attend_seconds(mode, shape, dtype, plan.device)
            out[f"{mode}_prefill_s"] = statistics.median(run[0] for run in runs[mode][1:])
            out[f"{mode}_attend_ms"] = 1000 * seconds
            out[f"{mode}_attend_tflops"] = 4 * g["heads"] * g["head_dim"] * pairs / seconds / 1e12
        if flash:
            _, cache_s, logits_s = runs["sdpa"][0]
            _, cache_f, logits_f = runs["flash"][0]
            diffs = [float((a.float() - b.float()).abs().max()) for a, b in zip(cache_s, cache_f)]
            out.update(cache_max_abs_diff=max(diffs),
                       logits_max_abs_diff=float((logits_s - logits_f).abs().max()),
                       logits_max_abs=float(logits_s.abs().max()),
                       prefill_speedup=out["sdpa_prefill_s"] / out["flash_prefill_s"],
                       attend_speedup=out["sdpa_attend_ms"] / out["flash_attend_ms"])
        else:
            out["note"] = "flash_attn is not importable here: SDPA only (vst's attention=auto falls back to it)"
    finally:
        c.attention = original
    say("attention: " + (f"cache diff {out['cache_max_abs_diff']:.3g}, logits diff {out['logits_max_abs_diff']:.3g}, "
                         f"flash {out['prefill_speedup']:.2f}x faster" if flash else out["note"]))


def part_max_frames(plan: Plan, state: State, out: dict) -> None:
    from vlc.evaluation.bench import OutOfMemory

    model = state.model
    out.update(limit_gib=plan.memory_gib, rows=[], start=plan.search["start"], cap=plan.search["cap"],
               step=plan.search["step"])
    if plan.device.type == "cuda":
        out["card_gib"] = torch.cuda.get_device_properties(plan.device).total_memory / 2**30
    limit_mib = plan.memory_gib * 1024 if plan.memory_gib else (out.get("card_gib", 0) * 1024 or None)
    started, budget = time.perf_counter(), plan.budgets["max_frames"] - 5
    for i, (label, overrides, share) in enumerate(plan.compressors):
        rest = sum(s for _, _, s in plan.compressors[i:])
        seconds = (budget - (time.perf_counter() - started)) * share / rest
        row = dict(compressor=label)
        out["rows"].append(row)
        say(f"max frames: {label} ({seconds:.0f} s)")
        set_compressor(model, plan, overrides)
        try:
            measure_sample(model, plan.warmup_frames, plan)  # first-call costs are not the compressor's
        except OutOfMemory:
            pass

        def probe(n: int, label=label) -> float:
            try:
                r = measure_sample(model, n, plan)
            except OutOfMemory:
                say(f"max frames: {label} {n:6d} frames: out of memory")
                raise
            say(f"max frames: {label} {n:6d} frames: peak {r['peak_mib'] / 1024:.1f} GiB, {r['context_s']:.1f} s")
            return r["peak_mib"]

        search_max_frames(probe, plan.search["start"], plan.search["cap"], plan.search["step"], limit_mib,
                          max(seconds, 0.0), row, known=state.known.get(label))
        say(f"max frames: {label}: {row['max_frames']} fit ({row['stopped_by']})")


def _clip_command(path: Path, clip: dict) -> list[str]:
    code = ("import sys; from pathlib import Path; sys.path.insert(0, {scripts!r}); import bench_decode; "
            "bench_decode.make_clip(Path({path!r}), {seconds}, {height}, {width})").format(
        scripts=str(ROOT / "scripts"), path=str(path), **{k: clip[k] for k in ("seconds", "height", "width")})
    return [sys.executable, "-c", code]


def start_clip(plan: Plan, state: State) -> None:
    """Part 5's clip (``scripts/bench_decode.py``'s textured pan) is encoded in the background while
    the GPU parts run."""
    c = plan.clip
    state.clip_path = plan.cache / f"pan-{c['seconds']:g}s-{c['height']}x{c['width']}.mp4"
    if not state.clip_path.exists():
        plan.cache.mkdir(parents=True, exist_ok=True)
        state.clip_job = subprocess.Popen(_clip_command(state.clip_path, c), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True)


def part_decode(plan: Plan, state: State, out: dict) -> None:
    from torch.utils.data import DataLoader

    from vlc.data.annotations import Sample
    from vlc.data.datamodule import VideoQADataset, collate_video_qa
    from vlc.evaluation.bench import CANDIDATES, QUESTION
    from vlc.evaluation.efficiency import autocast

    c, model = plan.clip, state.model
    size = model.backbone.encoder.img_size if model is not None else 336
    out.update(clip=f"{c['seconds']:g} s {c['height']}p", frames=c["frames"], size=size, backend=plan.backend,
               precision=plan.precision, device=plan.device.type, rows=[])
    if model is not None:  # the encoder's rate: uint8 frames already on the device, as a batch brings them
        enc, n = model.backbone.encoder, plan.encoder_frames
        pixels = NoiseClip(n, size).decode(0, n)[None].to(plan.device)  # (1, n, 3, S, S)
        mask, times = torch.ones(1, n, dtype=torch.bool, device=plan.device), torch.zeros(1, n, device=plan.device)
        with torch.no_grad(), autocast(plan.device, plan.precision):
            enc(pixels[:, : min(n, 64)], mask[:, : min(n, 64)], times[:, : min(n, 64)])
            synchronize(plan.device)
            start = time.perf_counter()
            enc(pixels, mask, times)
            synchronize(plan.device)
        out["encoder_frames_per_s"] = n / (time.perf_counter() - start)
        say(f"decode: encoder {out['encoder_frames_per_s']:.0f} frames/s ({n} frames at {size} px)")
    if state.clip_job is not None:
        say("decode: waiting for the clip to be encoded")
        _, err = state.clip_job.communicate()
        if state.clip_job.returncode != 0:
            raise RuntimeError(f"making the clip {state.clip_path} failed: {err[-2000:]}")
    for workers in c["workers"]:
        samples = 2 * max(1, workers)  # two rounds of every worker
        items = [Sample(id=f"clip-{k}", video=str(state.clip_path), question=QUESTION, answer="red",
                        candidates=CANDIDATES) for k in range(samples)]
        dataset = VideoQADataset(items, num_frames=c["frames"], backend=plan.backend, frame_size=size)
        loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_video_qa)
        start, frames = time.perf_counter(), 0
        for batch in loader:
            frames += batch["pixels"].shape[1]
        seconds = time.perf_counter() - start
        row = dict(workers=workers, samples=samples, frames=frames, seconds=seconds, frames_per_s=frames / seconds)
        out["rows"].append(row)
        say(f"decode: {workers} workers: {row['frames_per_s']:.0f} frames/s ({samples} samples in {seconds:.1f} s)")


def part_train_step(plan: Plan, state: State, out: dict) -> None:
    spec = importlib.util.spec_from_file_location("train_step_7b", ROOT / "scripts" / "train_step_7b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out["frames"] = int(plan.train_args[plan.train_args.index("--frames") + 1])
    say(f"train step: scripts/train_step_7b.py {' '.join(plan.train_args)}")
    result = module.main(list(plan.train_args))
    out.update(result, command="python scripts/train_step_7b.py " + " ".join(plan.train_args))
    steps = result["step_seconds"][1:] or result["step_seconds"]
    out["step_s"] = statistics.median(steps)
    say(f"train step: {out['step_s']:.2f} s a step, peak {result.get('peak_memory_gb')} GiB")


PART_FUNCTIONS = {"max_frames": part_max_frames, "prefill": part_prefill, "attention": part_attention,
                  "decode": part_decode, "train_step": part_train_step}
NEEDS_MODEL = ("prefill", "attention", "max_frames")


# ---------------------------------------------------------------------------------------------
# the report


def _n(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _flop(x: float) -> str:
    """FLOPs with a unit that keeps 3 significant digits: 3.91 PFLOP, 22.5 TFLOP, 180 MFLOP."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} FLOP"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _rate(tflops: float | None) -> str:
    return "–" if tflops is None else f"{tflops:.3g}"


def _status(part: dict) -> str:
    if part.get("status") == "ok":
        return ""
    why = {"timed out": f"timed out after {_n(part.get('seconds'))} s (budget {_n(part.get('budget_s'))} s); "
                        "what it measured before is below",
           "out of memory": f"out of memory: {part.get('error', '')}",
           "error": f"failed: {part.get('error', '')}", "skipped": part.get("error", "skipped")}
    return f"*{why.get(part.get('status'), part.get('status'))}*\n\n"


def render(report: dict) -> str:
    """The docs block: a header line, then a table per part that ran."""
    env = report.get("environment", {})
    cap = env.get("memory_cap")
    lines = [f"`{report.get('command', 'python scripts/gpu_check.py')}` — {env.get('model', '?')}, "
             f"{env.get('precision', '?')}, {env.get('device', '?')}"
             + (f" ({_n(env.get('card_gib'), 1)} GiB; {cap})" if env.get("card_gib") else "")
             + f", torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
               f"measured {report.get('date', '?')} in {_n(report.get('seconds'))} s.", ""]
    parts = report.get("parts", {})
    for number, key in PARTS.items():
        if key not in parts:
            continue
        part = parts[key]
        title = TITLES[key].format(frames=_n(part.get("frames", "?")), ratio=part.get("ratio", 16))
        lines += [f"**{number}. {title}** ({_n(part.get('seconds'))} s)", "", _status(part).rstrip()]
        lines += RENDERERS[key](part, report) + [""]
    return "\n".join(line for line in lines if line is not None).replace("\n\n\n", "\n\n").strip() + "\n"


def _render_max_frames(part: dict, report: dict) -> list[str]:
    if part.get("limit_gib"):
        limit = f"Allocator capped at {part['limit_gib']:g} GiB of the card's {_n(part.get('card_gib'), 1)} GiB"
    else:
        limit = f"The card's own {_n(part.get('card_gib'), 1)} GiB" if part.get("card_gib") else "No cap (CPU)"
    lines = [f"{limit}; probes from {_n(part.get('start'))} frames, "
             f"to within max({part.get('step')} frames, 1/8), up to {_n(part.get('cap'))} frames. "
             f"Video-XL: {VIDEO_XL_FRAMES} frames on one 80 GB GPU.", "",
             f"| compressor | most frames that fit | first that did not | peak GiB at the most | MiB per added frame "
             f"| the line reaches the cap at | {VIDEO_XL_FRAMES} frames | stopped by "
             f"| probes (frames: peak GiB or OOM, s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in part.get("rows", []):
        probes = r.get("probes", [])
        at = next((p for p in probes if p["frames"] == VIDEO_XL_FRAMES), None)
        if at is not None:
            fits = f"fit, {at['peak_mib'] / 1024:.1f} GiB" if at["peak_mib"] is not None else "out of memory"
        elif r.get("max_frames", 0) >= VIDEO_XL_FRAMES:
            fits = "fit"
        elif r.get("first_oom") is not None and r["first_oom"] <= VIDEO_XL_FRAMES:
            fits = "out of memory"
        else:
            fits = "not probed"
        most = _n(r.get("max_frames"))
        if r.get("stopped_by") in ("time", "frame cap", None):
            most = "≥ " + most
        shown = ", ".join(f"{p['frames']}: " + (f"{p['peak_mib'] / 1024:.1f}" if p["peak_mib"] is not None else "OOM")
                          + f" ({p['seconds']:.1f}{', part 2' if p.get('known') else ''})" for p in probes)
        peak = r["peak_mib"] / 1024 if r.get("peak_mib") is not None else None
        line = f"≈ {r['line_frames']:,} frames" if r.get("line_frames") else "–"
        lines.append(f"| {r['compressor']} | {most} | {_n(r.get('first_oom'))} | {_n(peak, 1)} "
                     f"| {_n(r.get('mib_per_frame'), 2)} | {line} | {fits} | {r.get('stopped_by') or 'timed out'} "
                     f"| {shown} |")
    return lines


def _render_prefill(part: dict, report: dict) -> list[str]:
    if "prefill_s" not in part:
        return []
    f = part["flops"]
    spec = part.get("spec_tflops")
    size, matmul = part.get("matmul_size", 8192), part["matmul_tflops"]
    of = (f"{100 * part['prefill_tflops'] / spec:.0f}% of {spec:g} (datasheet), " if spec else "") + \
        f"{100 * part['prefill_tflops'] / matmul:.0f}% of {_rate(matmul)} ({size}³ matmul here)"
    return [
        f"Video-XL-2: about {VIDEO_XL2_PREFILL_S:g} s for {VIDEO_XL_FRAMES} frames (its own model and prefill).", "",
        "| frames | visual tokens | KV tokens after (formula) | encoder + projector s | windowed prefill s | context s "
        "| peak GiB | prefill FLOPs | prefill TFLOP/s | of the peak | encoder + projector TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {_n(part['frames'])} | {_n(part['visual_tokens'])} | {_n(part['kv_tokens'])} ({_n(f['memory'])}) "
        f"| {part['encoder_s']:.2f} | {part['prefill_s']:.2f} | {part['context_s']:.2f} "
        f"| {part['peak_mib'] / 1024:.1f} "
        f"| {_flop(f['total'])} | {_rate(part['prefill_tflops'])} | {of} | {_rate(part['encoder_tflops'])} |", "",
        f"FLOPs of the windowed pass ({f['windows']} visual windows of {part['window']} raw tokens at "
        f"r = {part['ratio']}, "
        f"`vst_prefill_flops`): k/v projections {_flop(f['kv_proj'])}, q {_flop(f['q_proj'])}, o {_flop(f['o_proj'])}, "
        f"MLP {_flop(f['mlp'])}, attention {_flop(f['attention'])} causal ({_flop(f['attention_dense'])} as SDPA "
        f"computes it with vst's explicit mask); total {_flop(f['total'])}. Encoder + projector: "
        f"{_flop(part['encoder_flops'])}.",
    ]


def _render_train_step(part: dict, report: dict) -> list[str]:
    if "step_s" not in part:
        return []
    return [
        f"`{part['command']}` (mode {part.get('mode')}: {_count(part.get('trainable_params', 0))} of "
        f"{_count(part.get('params', 0))} parameters train; bf16-mixed, the LLM's weights and AdamW moments in bf16; "
        f"peak is the CUDA allocator's high-water mark over the steps).", "",
        "| frames | visual tokens | KV tokens | step s (each) | step s (median after the first) | peak GiB | losses |",
        "|---|---|---|---|---|---|---|",
        f"| {part['frames']} | {_n(part.get('visual_tokens'))} | {_n(part.get('kv_tokens'))} "
        f"| {', '.join(f'{s:.2f}' for s in part['step_seconds'])} | {part['step_s']:.2f} "
        f"| {_n(part.get('peak_memory_gb'), 1)} | {', '.join(f'{x:.3f}' for x in part.get('losses', []))} |",
    ]


def _render_attention(part: dict, report: dict) -> list[str]:
    if "sdpa_prefill_s" not in part:
        return []
    s = part["attend_shape"]
    shape = f"q {s['heads']}×{s['q_len']}, k/v {s['kv_heads']}×{s['k_len']}, head dim {s['head_dim']}"
    lines = [f"vst r16 prefill of {part['frames']} frames (median of the runs after the first) and the attention "
             f"call alone at the {part.get('attend_for_frames')}-frame prefill's last window ({shape}), "
             f"{part['dtype']}.", "",
             "| attention | prefill s | attention call ms | attention TFLOP/s (causal) |", "|---|---|---|---|"]
    for mode in ("sdpa", "flash"):
        if f"{mode}_prefill_s" in part:
            lines.append(f"| {mode} | {part[f'{mode}_prefill_s']:.3f} | {part[f'{mode}_attend_ms']:.2f} "
                         f"| {_rate(part[f'{mode}_attend_tflops'])} |")
    if part.get("flash_available"):
        lines += ["", f"flash-attn is {part['prefill_speedup']:.2f}× SDPA's speed on the prefill and "
                      f"{part['attend_speedup']:.2f}× on the attention call; max abs difference of the cache "
                      f"{part['cache_max_abs_diff']:.3g}, of the logits {part['logits_max_abs_diff']:.3g} "
                      f"(logits up to {part['logits_max_abs']:.3g})."]
    else:
        lines += ["", f"{part.get('note')}."]
    return lines


def _render_decode(part: dict, report: dict) -> list[str]:
    enc, step = part.get("encoder_frames_per_s"), report.get("parts", {}).get("train_step")
    lines = [f"{part.get('clip')} clip (`scripts/bench_decode.py`'s textured pan), {part.get('frames')} frames a "
             f"sample decoded to {part.get('size')} px by the data loader ({part.get('backend')}, `VideoQADataset` + "
             f"`collate_video_qa`, batch 1, time from the first request to the last batch).", "",
             "| what | workers | samples | frames/s | ÷ encoder's |", "|---|---|---|---|---|"]
    for r in part.get("rows", []):
        ratio = f"{r['frames_per_s'] / enc:.3f}" if enc else "–"
        lines.append(f"| decoding | {r['workers']} | {r['samples']} | {r['frames_per_s']:,.0f} | {ratio} |")
    if enc:
        lines.append(f"| encoder ({part.get('precision')}, on {part.get('device')}) | – | – | {enc:,.0f} | 1 |")
    if step and step.get("step_s"):
        fps = step["frames"] / step["step_s"]
        lines.append(f"| training step (part 3) | – | – | {fps:,.1f} | {fps / enc:.4f} |" if enc else
                     f"| training step (part 3) | – | – | {fps:,.1f} | – |")
    if part.get("rows") and enc:
        best = max(part["rows"], key=lambda r: r["frames_per_s"])
        slower = "decoding" if best["frames_per_s"] < enc else "the encoder"
        lines += ["", f"With {best['workers']} workers decoding gives {best['frames_per_s']:,.0f} frames/s against the "
                      f"encoder's {enc:,.0f}: {slower} is the slower of the two."]
    return lines


RENDERERS = {"max_frames": _render_max_frames, "prefill": _render_prefill, "train_step": _render_train_step,
             "attention": _render_attention, "decode": _render_decode}


def write_docs(report: dict, path: Path) -> None:
    from vlc.evaluation.bench import update_docs

    update_docs(path, TABLE, render(report))


# ---------------------------------------------------------------------------------------------
# the device call


WHEELS = ("hydra-core==1.3.2", "omegaconf==2.3.0", "decord==0.6.0", "av==15.1.0")
# scripts/gpu_check installs the carried wheels into /tmp/site, then runs this script
DEVICE_RUN = "set -o pipefail; bash scripts/gpu_check --out $OUT 2>&1 | tee $OUT/gpu_check.log"
DEVICE_COMMAND = """\
# 1. Here, once, in the repository root: what a GPU image with PyTorch, transformers, timm and Lightning
#    but no package index lacks, as wheels for its Python 3.12 (about 54 MB, ignored by git).
echo /.whl/ >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
  --platform manylinux2010_x86_64 -d .whl {wheels}
python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # pure Python; omegaconf needs 4.9.*

# 2. On the GPU machine, in the repository root with .whl/ copied along (OUT: a folder to bring back;
#    10 minutes is enough):
{run}

# 3. Back here: the rows into docs/benchmarks.md.
python scripts/gpu_check.py --from-json <OUT brought back>/gpu_check.json
"""


# ---------------------------------------------------------------------------------------------
# the command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", "--tiny", dest="dry_run", action="store_true",
                   help="every part on CPU with model=tiny and small frame counts (the same code path)")
    p.add_argument("--parts", default="1,2,3,4,5", help="which parts, by number or name (default all)")
    p.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                   help=f"a part's time budget (defaults {', '.join(f'{k}={v}' for k, v in BUDGETS_S.items())})")
    p.add_argument("--memory-gib", type=float, default=79.0,
                   help="cap the CUDA caching allocator here when the card has more (default 79: what an 80 GB "
                        "H100 leaves for tensors, its 79.6 GiB less the CUDA context); 0: no cap")
    p.add_argument("--frames-cap", type=int, default=None, help="part 1 stops growing here (default 8192; dry run 128)")
    p.add_argument("--cache", type=Path, default=None, help="where part 5's clip is kept")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json and gpu_check.md "
                                                          "(default logs/gpu_check/<time>)")
    p.add_argument("--update-docs", nargs="?", const=DOCS, default=None, type=Path, metavar="PATH",
                   help="write the rows into docs/benchmarks.md (or PATH); the default for the GPU run and --from-json")
    p.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--from-json", nargs="+", type=Path, default=None, metavar="JSON",
                   help="measure nothing: render saved reports (later files win, part by part) into the docs")
    p.add_argument("--print-device-command", action="store_true",
                   help="print how to run this on a GPU machine without a package index (the wheels to carry)")
    return p.parse_args(argv)


def selected_parts(text: str) -> list[str]:
    names = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name = PARTS.get(int(item)) if item.isdigit() else item
        if name not in PARTS.values():
            raise SystemExit(f"gpu_check --parts {text}: {item!r} is not a part; choose from "
                             + ", ".join(f"{k} ({v})" for k, v in PARTS.items()))
        names.append(name)
    return [p for p in RUN_ORDER if p in names]


def environment(plan: Plan) -> dict[str, Any]:
    import transformers

    from vlc.evaluation.efficiency import device_name

    env = dict(model=plan.shared[0].partition("=")[2] + (" (random bf16 weights)" if not plan.dry_run else ""),
               precision=plan.precision, device=device_name(plan.device), torch=torch.__version__,
               transformers=transformers.__version__, dry_run=plan.dry_run)
    if plan.device.type == "cuda":
        total = torch.cuda.get_device_properties(plan.device).total_memory
        env.update(card_gib=total / 2**30, cuda=torch.version.cuda)
        if plan.memory_gib and plan.memory_gib * 2**30 < total:
            fraction = plan.memory_gib * 2**30 / total
            torch.cuda.set_per_process_memory_fraction(fraction, plan.device)
            env["memory_cap"] = (f"allocator capped at {plan.memory_gib:g} GiB: set_per_process_memory_fraction"
                                 f"({fraction:.4f})")
        else:
            plan.memory_gib = None
            env["memory_cap"] = "no cap: the card's own memory"
    return env


def main(argv: list[str] | None = None) -> dict:
    global _START
    _START = time.perf_counter()
    args = parse_args(argv)
    if args.print_device_command:
        print(DEVICE_COMMAND.format(wheels=" ".join(WHEELS), run=DEVICE_RUN))
        return {}
    if args.from_json:
        report: dict = {"parts": {}}
        for path in args.from_json:
            saved = json.loads(path.read_text())
            report = {**report, **{k: v for k, v in saved.items() if k != "parts"},
                      "parts": {**report["parts"], **saved.get("parts", {})}}
        if not args.no_docs:
            write_docs(report, args.update_docs or DOCS)
            say(f"wrote {len(report['parts'])} parts into {args.update_docs or DOCS}")
        print(render(report))
        return report
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; --dry-run runs the same parts on CPU at tiny scale")

    plan = Plan.make(args)
    parts = selected_parts(args.parts)
    if plan.device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # stable timings on a shared machine, as vlc-bench
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = args.out or ROOT / "logs" / "gpu_check" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = dict(command=command.strip(), date=stamp[:10], environment=environment(plan), parts={})
    say(f"gpu_check: {', '.join(parts)} on {report['environment']['device']}"
        + (f" ({report['environment']['memory_cap']})" if "memory_cap" in report["environment"] else ""))
    state = State()
    if "decode" in parts:
        start_clip(plan, state)
    build_error = None
    from vlc.evaluation.bench import is_oom

    if any(p in parts for p in (*NEEDS_MODEL, "decode")):
        say(f"building {' '.join(plan.shared + plan.vst)}")
        try:
            with time_box(plan.budgets["build"], "build"):
                state.model = build_model(plan, plan.vst)
            say(f"built: {_count(sum(p.numel() for p in state.model.parameters()))} parameters")
        except (Exception, PartTimeout) as error:  # noqa: BLE001 - reported as every dependent part's error
            build_error = f"the model did not build: {type(error).__name__}: {error}"
            say(build_error)
    try:
        for name in parts:
            part = report["parts"][name] = {"budget_s": plan.budgets[name]}
            if name == "train_step":  # it builds its own model: the shared one goes first
                state.model = None
                free(plan.device)
            if name in NEEDS_MODEL and state.model is None:
                part.update(status="error", error=build_error or "no model", seconds=0.0)
                continue
            started = time.perf_counter()
            try:
                with time_box(plan.budgets[name], name):
                    PART_FUNCTIONS[name](plan, state, part)
                part["status"] = "ok"
            except PartTimeout as timeout:
                part.update(status="timed out")
                say(str(timeout))
            except Exception as error:  # noqa: BLE001 - recorded; the other parts still run
                # Out of memory outside part 1's search is a finding (it does not fit), not a fault.
                part.update(status="out of memory" if is_oom(error) else "error",
                            error=f"{type(error).__name__}: {str(error)[:500]}")
                say(f"{name}: {part['error']}")
            part["seconds"] = time.perf_counter() - started
            free(plan.device)
    finally:
        if state.clip_job is not None and state.clip_job.poll() is None:
            state.clip_job.kill()
        if plan.device.type == "cpu":
            torch.set_num_threads(threads)
    report["seconds"] = time.perf_counter() - _START
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    docs = None if args.no_docs else (args.update_docs or (None if plan.dry_run else DOCS))
    if docs:
        write_docs(report, docs)
    (out_dir / "gpu_check.md").write_text(render(report))
    say(f"done in {report['seconds']:.0f} s: {out_dir / 'gpu_check.json'}" + (f", {docs}" if docs else ""))
    errors = [n for n, p in report["parts"].items() if p.get("status") == "error"]
    if errors:
        say(f"parts with errors: {', '.join(errors)}")
    report["exit_status"] = 1 if errors else 0
    return report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]).get("exit_status", 0))
