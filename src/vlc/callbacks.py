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
    """Stop training at the first NaN/Inf loss or gradient, naming the step and the sample ids of
    the batch, before the optimizer step touches the weights.

    The loss is checked in ``on_before_backward``, the gradients in ``on_before_optimizer_step``
    (a finite loss can still backpropagate to NaN gradients, e.g. through a 0/0), so the weights
    stay finite and every checkpoint on disk is still usable — the run can resume from the last
    one after the cause is fixed. A checkpoint is never written from non-finite weights. Costs one
    device→host sync of a scalar per check. Under 16-mixed precision the grad scaler skips steps
    with inf gradients by design, so only the loss is checked there.
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

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # 16-mixed: inf gradients are the scaler's signal to skip the step
        grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for _, g in grads]).all()):
            return
        bad = [n for n, g in grads if not bool(torch.isfinite(g).all())]
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        message = (
            f"non-finite gradients at step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx}) with a finite loss, in {len(bad)} of {len(grads)} parameters (first: "
            f"{', '.join(bad[:3])}); sample ids in this batch: {self._ids if self._ids is not None else 'unknown'}. "
            f"Training stopped before the optimizer step, so the weights are still finite; last checkpoint: {last}. "
            f"Check these samples, or lower optim.lr, then resume with ckpt_path."
        )
        log.error(message)
        raise NonFiniteLossError(message)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        bad = [n for n, p in pl_module.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteLossError(
                f"refusing to write a checkpoint at step {trainer.global_step}: {len(bad)} parameters hold NaN/Inf "
                f"(first: {', '.join(bad[:3])}); the checkpoints already on disk are kept"
            )


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
