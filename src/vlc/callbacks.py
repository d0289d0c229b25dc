"""Lightning callbacks of vlc's own (configs/callbacks/default.yaml lists them with Lightning's)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A training loss that is NaN or infinite; the message names the step and the batch's sample ids."""


class NonFiniteLossGuard(Callback):
    """Stop training at the first NaN/Inf loss, naming the step and the sample ids of the batch.

    The loss is checked in ``on_before_backward``: before the backward pass and the optimizer
    step, so the weights stay finite and every checkpoint on disk is still usable — the run can
    resume from the last one after the cause is fixed. Training a few hundred more steps on NaN
    weights only hides where it started. Costs one device→host sync of a scalar per step.
    """

    def __init__(self) -> None:
        self._ids: list[str] | None = None
        self._batch_idx = -1

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._ids = list(batch["ids"]) if isinstance(batch, dict) and "ids" in batch else None
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        value = loss.detach().float().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        message = (
            f"non-finite training loss {value} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {self._batch_idx}); sample ids in this batch: {self._ids if self._ids is not None else 'unknown'}. "
            f"Training stopped before the backward pass, so the weights are still finite; last checkpoint: {last}. "
            f"Check these samples (an empty answer, an unreadable video), or lower optim.lr, keep "
            f"trainer.gradient_clip_val set, or train in 32-true precision, then resume with ckpt_path."
        )
        log.error(message)
        raise NonFiniteLossError(message)


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, but ``last.ckpt`` is written at every validation.

    Lightning writes ``last.ckpt`` only at a step where it also saved a top-k checkpoint, so while
    the monitored metric does not improve (a plateau, or the first validation after a resume, whose
    best score came back with the checkpoint) ``last.ckpt`` stays several intervals behind and a
    kill loses all of them. Here every validation leaves a ``last.ckpt`` to resume from: a kill
    loses at most one ``trainer.val_check_interval``.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
