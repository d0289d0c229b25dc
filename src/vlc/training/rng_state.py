"""The global RNG states in the checkpoint, so a resumed run draws what the uninterrupted run draws.

Lightning checkpoints hold model, optimizer, scheduler, loop progress and callback states, not the
torch / numpy / python RNGs. Training draws from them after seeding: vst's per-window compression
ratio, dropout, LoRA dropout. ``RestoreRNGState`` saves the states when a checkpoint is written and
puts them back right before the first training batch of the resumed run, after the resumed run's
setup (building loaders, sanity checks) has drawn whatever it draws.

Under DDP the checkpoint is written by rank 0 and every rank restores rank 0's states; ranks seeded
alike (``seed_everything`` with one seed) draw alike, so this is the state each of them had.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """Tensors, ints and tuples only, so ``torch.load(weights_only=True)`` reads them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RestoreRNGState(L.Callback):
    """Save the RNG states with every checkpoint; restore them before the first batch after a resume."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
