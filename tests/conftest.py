"""Shared fixtures: the real configs, composed and shrunk; a tiny fake batch; a tiny trained-free model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vlc.run import CONFIG_DIR

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))

# Small enough for 2 CPU cores, big enough to be a real multi-frame video.
TINY_DATA = [
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=8",
    "data.synthetic.num_frames=8",
    "data.num_frames=8",
    "data.batch_size=4",
    "data.num_workers=0",
]


def compose_config(name: str, overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose ``configs/<name>.yaml`` as Hydra would, with run outputs and data under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.data_dir = str(tmp_path.parent / "vlc-test-data")  # shared by tests: generated once
        del cfg.hydra
        # Tests train a handful of steps: they exercise the compressors' training path from step 0
        # unless a test asks for model=tiny's uncompressed phase (model.uncompressed_steps=N) itself.
        if cfg.get("model") is not None and not any("uncompressed_steps" in o for o in overrides):
            cfg.model.uncompressed_steps = 0
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    def make(overrides: list[str] = (), name: str = "train") -> DictConfig:
        return compose_config(name, list(overrides), tmp_path)

    return make


def option_scores(model, batch: dict):
    """(B, K) option log-likelihoods of a batch (-inf pads missing options), as evaluation scores them."""
    p = model.pipeline
    return p.score_candidates(p.encode_context(batch), batch["questions"], batch["candidates"])


def record_column(model, batch: dict, key: str) -> list:
    """One field of the evaluation records of a batch (``VideoPipeline.evaluate``), per sample."""
    return [r[key] for r in model.pipeline.evaluate(batch)]


def fake_batch(B: int = 2, T: int = 6, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        pixels=torch.randint(0, 256, (B, T, 3, size, size), dtype=torch.uint8, generator=g),
        frame_mask=torch.ones(B, T, dtype=torch.bool),
        times=torch.arange(T).float().repeat(B, 1) / 4,
        ids=[f"s{i}" for i in range(B)],
        questions=["What color is the shape that appears briefly in the video?"] * B,
        candidates=[["red", "green", "blue", "yellow"], ["cyan", "orange", "purple"]][:B] * (B // 2 or 1),
        answers=["red", "orange"][:B] * (B // 2 or 1),
        tasks=["needle"] * B,
        meta=[{}] * B,
    )
