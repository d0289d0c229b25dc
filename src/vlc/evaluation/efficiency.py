"""Cost accounting shared by every compressor: latency and peak memory, measured the same way."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_CPUINFO = Path("/proc/cpuinfo")


def _read_status_kb(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA max-allocated on GPU, the process high-water mark on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux resets VmHWM to the current RSS when 5 is written here.
            _CLEAR_REFS.write_text("5")
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak since the last reset, in MiB (CUDA: tensors allocated; CPU: process resident set)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if _STATUS.exists():
        return _read_status_kb("VmHWM") / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_memory_mb(device: torch.device) -> float:
    """Memory held now, in the unit ``peak_memory_mb`` reports (CUDA: allocated; CPU: resident set)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    if _STATUS.exists():
        return _read_status_kb("VmRSS") / 1024
    return peak_memory_mb(device)


def release_memory(device: torch.device) -> None:
    """Return freed memory before a baseline is read, so one measurement's leftovers (Python garbage,
    the CUDA caching allocator, glibc's retained heap) do not count as the next one's baseline."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device | str) -> str:
    """What a measurement ran on: the CUDA device name, or the CPU model name and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    if _CPUINFO.exists():
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    threads = torch.get_num_threads()
    return f"{model} ({threads} thread{'s' if threads > 1 else ''})"


class Stopwatch:
    """Accumulates wall time of named spans; synchronises CUDA so GPU work is counted where it runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def span(self, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def ms(self, name: str) -> float:
        return 1000.0 * self.seconds.get(name, 0.0)


def measure_context(model: Any, batch: dict) -> tuple[Any, dict[str, Any]]:
    """Build ``model``'s context for ``batch`` and what it cost, the same way for every compressor.

    Returns ``(Context, cost)``; cost holds per-sample tensors ``visual_tokens`` (entering the LLM),
    ``kv_tokens`` and ``kv_bytes`` (the cache after prefill, padding excluded), and per-batch floats
    ``encoder_ms`` / ``prefill_ms`` / ``context_ms`` (per sample: the batch's time / B; encoder
    includes the pre-LLM compressor, prefill is the rest of the context) and ``peak_mem_mb`` (the
    peak while building the context, reset just before; on CPU the process high-water mark, so it
    includes everything resident, see ``base_mem_mb``: what was held just before).
    """
    device = model.device
    B = batch["pixels"].shape[0]
    watch = Stopwatch(device)
    base = current_memory_mb(device)
    reset_peak_memory(device)
    with watch.span("context"):
        ctx = model.encode_context(batch, watch)
    peak = peak_memory_mb(device)
    cost = dict(
        visual_tokens=ctx.visual_tokens.float(),
        kv_tokens=ctx.attention_mask.sum(1).float(),
        kv_bytes=ctx.kv_bytes().float(),
        encoder_ms=watch.ms("encoder") / B,
        prefill_ms=(watch.ms("context") - watch.ms("encoder")) / B,
        context_ms=watch.ms("context") / B,
        peak_mem_mb=peak,
        base_mem_mb=base,
    )
    return ctx, cost


def autocast(device: torch.device, precision: str | int = "32-true"):
    """The autocast context of a Lightning precision string (32-true, bf16-mixed, 16-mixed), for
    measurements made outside a Trainer (vlc-bench)."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: measurements support {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    """A collated batch on ``device``: tensors, and LazyFrames (lazily decoded pixels decode onto it)."""
    from vlc.data.video import LazyFrames

    return {k: v.to(device) if isinstance(v, (torch.Tensor, LazyFrames)) else v for k, v in batch.items()}
