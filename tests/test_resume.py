"""Exact resume: a run killed after its last checkpoint and restarted with ``ckpt_path=last`` trains
on the same batches, draws the same vst ratios and reaches the same per-step losses as a run that
was never interrupted; checkpoint files are replaced atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from vlc.data.sampler import ResumableLoader, ResumableSampler
from vlc.run import train
from vlc.training.checkpoint_io import AtomicCheckpointIO

from conftest import TINY_DATA, compose_config

# 8 train samples / batch 2 = 4 steps per epoch; validation (one batch) and last.ckpt every 2 steps.
RUN = [*TINY_DATA, "data.synthetic.num_train=8", "data.batch_size=2", "experiment=vst_ratio16",
       "trainer.max_steps=6", "trainer.val_check_interval=2",
       "trainer.limit_val_batches=1",
       "trainer.check_val_every_n_epoch=null", "trainer.log_every_n_steps=1", "optim.warmup_steps=2",
       "logger=csv", "callbacks.progress_bar=null"]


class LossRecorder(L.Callback):
    """Appends {step, epoch, batch, rank, loss, ids} per training batch to a JSON-lines file.
    ``loss`` is the batch's own loss (Lightning hands over loss / accumulate_grad_batches)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = dict(step=trainer.global_step, epoch=trainer.current_epoch, batch=batch_idx, rank=trainer.global_rank,
                   loss=float(outputs["loss"]) * trainer.accumulate_grad_batches, ids=list(batch["ids"]))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class CrashAt(L.Callback):
    """Raises after optimizer step ``step``, as a killed job would stop: the work since the last
    checkpoint is lost."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise SystemExit(f"simulated crash after step {trainer.global_step}")


def _cfg(root: Path, *extra: str, crash: int | None = None):
    cfg = compose_config("train", [*RUN, *extra], root)
    with open_dict(cfg):
        cfg.paths.data_dir = str(root.parent / "vlc-test-data")
        cfg.callbacks.recorder = {"_target_": "test_resume.LossRecorder", "path": str(root / "losses.jsonl")}
        if crash is not None:
            cfg.callbacks.crash = {"_target_": "test_resume.CrashAt", "step": crash}
    return cfg


def _losses(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "losses.jsonl").read_text().splitlines()]


def test_killed_and_resumed_run_reproduces_the_uninterrupted_losses(tmp_path):
    whole = tmp_path / "whole"
    train(_cfg(whole))
    ref = _losses(whole)
    assert [r["step"] for r in ref] == list(range(1, 7))

    broken = tmp_path / "broken"
    with pytest.raises(SystemExit, match="after step 3"):
        train(_cfg(broken, crash=3))
    last = broken / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2  # the validation at step 2 wrote it; step 3 is lost
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 2}]
    assert "rng" in state["callbacks"]["RestoreRNGState"]
    assert not list(last.parent.glob("*.tmp-*"))  # no temp file left behind

    # Resume in the same run directory (what hydra.run.dir=<run> gives on the command line).
    (broken / "losses.jsonl").unlink()
    train(_cfg(broken, "ckpt_path=last"))
    resumed = _losses(broken)
    assert [r["step"] for r in resumed] == [3, 4, 5, 6]
    # Steps 3-4 (the rest of epoch 0, resumed mid-epoch) and 5-6 (epoch 1, reshuffled): same samples, same losses.
    for got, want in zip(resumed, ref[2:]):
        assert (got["epoch"], got["batch"], got["ids"]) == (want["epoch"], want["batch"], want["ids"])
        assert abs(got["loss"] - want["loss"]) <= 1e-6, (got, want)
    assert ref[4]["epoch"] == 1 and set(ref[4]["ids"]) != set(ref[0]["ids"])


def test_epoch_order_is_a_function_of_seed_and_epoch_and_resumes_part_way(tmp_path):
    data = list(range(10))
    loader = ResumableLoader(data, batch_size=3, sampler=ResumableSampler(data, seed=7),
                             generator=torch.Generator().manual_seed(7))
    epoch0 = [b.tolist() for b in loader]
    loader.sampler.set_epoch(1)
    epoch1 = [b.tolist() for b in loader]
    assert sorted(sum(epoch0, [])) == data and sorted(sum(epoch1, [])) == data and epoch0 != epoch1
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(7)).tolist()
    assert epoch0 == [perm[i:i + 3] for i in (0, 3, 6, 9)]

    loader.sampler.set_epoch(0)
    it = iter(loader)
    next(it)  # one batch trained
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 1}
    fresh = ResumableLoader(data, batch_size=3, sampler=ResumableSampler(data, seed=7))
    fresh.load_state_dict(state)
    assert [b.tolist() for b in fresh] == epoch0[1:]
    list(it)  # the epoch ran out: a checkpoint now resumes at the start of the next epoch
    assert loader.state_dict() == {"epoch": 1, "batches": 0}


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_write_fails(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert os.listdir(path.parent) == ["last.ckpt"]


class CrashBefore(L.Callback):
    """Raises before optimizer step ``step`` + 1 starts: when ``step`` is a validation step, after
    that validation and its checkpoint — a kill right at the checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise SystemExit(f"simulated crash before step {trainer.global_step + 1}")


def _outcome(root: Path) -> tuple[dict, list[str], int]:
    run = root / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    kept = {k: metrics[k] for k in ("val/acc", "val/n", "train_steps", "train/loss", "val/kv_tokens")}
    kept["checkpoint"] = Path(metrics["checkpoint"]).name
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    return kept, sorted(p.name for p in (run / "checkpoints").iterdir()), last


@pytest.mark.parametrize("where", ["at_validation", "mid_interval"])
def test_resumed_run_ends_as_the_uninterrupted_one(tmp_path, where):
    """Killed right after the step-4 validation wrote its checkpoint, or after step 3 (mid-interval),
    then resumed: the final metrics.json, the best checkpoint and the set of checkpoint files are
    those of the run that was never stopped, and the kill lost at most one validation interval."""
    whole = tmp_path / "whole"
    train(_cfg(whole, "trainer.limit_val_batches=2"))
    broken = tmp_path / "broken"
    cfg = _cfg(broken, "trainer.limit_val_batches=2")
    with open_dict(cfg):
        cfg.callbacks.crash = ({"_target_": "test_resume.CrashBefore", "step": 4} if where == "at_validation"
                               else {"_target_": "test_resume.CrashAt", "step": 3})
    with pytest.raises(SystemExit, match="simulated crash"):
        train(cfg)
    last = torch.load(broken / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == (4 if where == "at_validation" else 2)  # at most one interval (2 steps) lost
    train(_cfg(broken, "trainer.limit_val_batches=2", "ckpt_path=last"))
    assert _outcome(broken) == _outcome(whole)
    assert _outcome(whole)[2] == 6  # last.ckpt follows every validation, improved or not


def test_last_checkpoint_is_written_at_every_validation_even_without_improvement(tmp_path):
    """Lightning writes last.ckpt only where a top-k checkpoint was saved; vlc's ModelCheckpoint
    writes it at every validation, so a plateau of val/acc never leaves it behind."""
    root = tmp_path / "run"
    cfg = _cfg(root, "trainer.max_steps=6", "optim.lr=0")  # lr 0: val/acc never improves after step 2
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": "test_resume.CrashBefore", "step": 6 - 2}
    with pytest.raises(SystemExit):
        train(cfg)
    ckpts = root / "run" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    assert [p.name for p in sorted(ckpts.glob("step_*.ckpt"))] == ["step_000002.ckpt"]  # the best stays step 2
