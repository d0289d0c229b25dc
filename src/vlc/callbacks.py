"""Lightning callbacks of vlc's own (configs/callbacks/default.yaml lists them with Lightning's)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.callbacks import TQDMProgressBar

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


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar counting what a step-budgeted run is about: global step n of
    ``trainer.max_steps`` (not batches of the current epoch), its rate and ETA, the phase
    ("warm-up" while ``model.uncompressed_steps`` bypasses the compressor, then "compressing"),
    and the last validation's accuracy with the step it was measured at (``val/acc@500``), so a
    stale figure is never shown as if it were current. Evaluation bars are Lightning's (batches,
    rate, ETA)."""

    def __init__(self, refresh_rate: int = 10, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._last_val: tuple[int, float] | None = None

    def _total(self, trainer: L.Trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=self._total(trainer))
        bar.initial = trainer.global_step  # a resumed run starts where its checkpoint was
        bar.n = trainer.global_step
        bar.set_description(self._phase(trainer, pl_module))

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run: epochs are not what the budget counts

    @staticmethod
    def _phase(trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        warm = getattr(pl_module, "uncompressed_steps", 0)
        if trainer.global_step < warm:
            return f"train [warm-up {trainer.global_step}/{warm}, uncompressed]"
        return "train [compressing]" if warm else "train"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is not None and not bar.disable and (n % max(1, self.refresh_rate) == 0 or n == bar.total):
            bar.n = n
            bar.set_description(self._phase(trainer, pl_module), refresh=False)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        acc = trainer.callback_metrics.get("val/acc")
        if acc is not None and not trainer.sanity_checking:
            self._last_val = (trainer.global_step, float(acc))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = {k: v for k, v in super().get_metrics(trainer, pl_module).items() if not k.startswith("val/")}
        items.pop("v_num", None)
        if self._last_val is not None:
            step, acc = self._last_val
            items[f"val/acc@{step}"] = f"{acc:.3f}"
        return items
