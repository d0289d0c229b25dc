"""Training faults: a non-finite loss stops the run naming the batch's sample ids, before the weights
or any checkpoint are touched; a run killed with SIGKILL leaves a loadable last.ckpt at most one
checkpoint interval behind, and resumes from it."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vlc.callbacks import NonFiniteLossError
from vlc.model.video_llm import VideoLLM
from vlc.run import train

from conftest import TINY_DATA

ROOT = Path(__file__).parents[1]


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point())


def test_nan_loss_stops_naming_the_batch_ids_with_weights_and_checkpoints_intact(cfg_factory, monkeypatch):
    poisoned: dict[str, list[str]] = {}
    forward = VideoLLM.forward

    def nan_at_step_3(self, batch):
        loss = forward(self, batch)
        if self.training and self.trainer.global_step == 3:
            poisoned["ids"] = list(batch["ids"])
            return loss * float("nan")
        return loss

    monkeypatch.setattr(VideoLLM, "forward", nan_at_step_3)
    # A checkpoint after every step from the first validation (step 2) on: last.ckpt is at step 3.
    cfg = cfg_factory([*TINY_DATA, "experiment=pool_baseline", "trainer.max_steps=6", "trainer.val_check_interval=2",
                       "++callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.progress_bar.refresh_rate=0"])
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    message = str(info.value)
    assert message.startswith(f"non-finite training loss nan at step 3 (epoch 0, batch 3); sample ids in this batch: "
                              f"{poisoned['ids']}. Training stopped before the backward pass")
    assert f"last checkpoint: {last}." in message
    checkpoint = torch.load(last, map_location="cpu")  # plain torch.load (weights_only) reads it
    assert checkpoint["global_step"] == 3 and all_finite(checkpoint["state_dict"])


# ---- kill -9 ---------------------------------------------------------------------------------

EVERY = 2  # checkpoint interval (steps)
# ModelCheckpoint monitors val/acc: Lightning (2.6) defers step-interval saves until that metric
# exists, so no checkpoint is written before the first validation. Validate early (step 4).
VALIDATE = 4


def cli(run_dir: Path, env: dict, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *TINY_DATA, "experiment=pool_baseline",
            f"hydra.run.dir={run_dir}", f"++callbacks.model_checkpoint.every_n_train_steps={EVERY}",
            f"trainer.val_check_interval={VALIDATE}", "trainer.log_every_n_steps=1",
            "callbacks.progress_bar.refresh_rate=0",
            "++logger.csv.flush_logs_every_n_steps=1", *extra]


def ckpt_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu")["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.mark.slow
def test_sigkill_mid_training_leaves_a_loadable_last_checkpoint_and_resumes(tmp_path):
    env = {**os.environ, "VLC_DATA_DIR": str(tmp_path / "data"), "VLC_LOG_DIR": str(tmp_path / "logs")}
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cli(run_dir, env, "trainer.max_steps=200"), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while (ckpt_step(last) or 0) < VALIDATE + 2 * EVERY:  # a few checkpoints in, so the kill lands mid-run
            assert proc.poll() is None, "training ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        time.sleep(0.7)  # somewhere inside the next interval (a step takes ~0.5-1 s here)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    saved = ckpt_step(last)
    assert saved is not None and saved % EVERY == 0  # loads with torch.load, and is a whole checkpoint
    steps = logged_steps(run_dir)
    done = max(steps) + 1  # optimizer steps the killed run finished (train/loss is logged at step - 1)
    assert saved <= done and done - saved <= EVERY, (saved, done)  # at most one interval lost
    leftovers = sorted(p.name for p in last.parent.iterdir() if ".tmp" in p.name)

    resumed = subprocess.run(cli(run_dir, env, "ckpt_path=last", f"trainer.max_steps={saved + EVERY}"),
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log_text = (run_dir / "train.log").read_text() + resumed.stdout + resumed.stderr
    assert f"Restoring states from the checkpoint path at {last}" in log_text
    after = logged_steps(run_dir)
    assert after and min(after) >= saved - 1 and max(after) + 1 == saved + EVERY
    assert ckpt_step(last) == saved + EVERY
    print(f"killed at ~step {done}, last.ckpt at step {saved}, temp files left by the kill: {leftovers}")
