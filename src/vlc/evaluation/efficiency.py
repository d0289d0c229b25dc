"""Cost accounting shared by every compressor: latency and peak memory, measured the same way."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
