"""Console entry points: ``vlc-train`` and ``vlc-eval`` (the same as ``python train.py`` / ``eval.py``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vlc.run import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    from vlc.run import train

    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    from vlc.run import evaluate

    evaluate(cfg)
