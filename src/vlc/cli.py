"""Console entry points: ``vlc-train`` and ``vlc-eval`` (the same as ``python train.py`` / ``eval.py``), and
``vlc-bench`` (the same as ``python -m vlc.evaluation.bench``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vlc.run import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    from vlc.config_check import check_config_or_exit
    from vlc.run import train

    check_config_or_exit(cfg)  # a bad value: one paragraph on stderr and exit status 2, before anything is built

    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    from vlc.config_check import check_config_or_exit
    from vlc.run import evaluate

    check_config_or_exit(cfg)

    evaluate(cfg)


def bench_main() -> None:
    """``vlc-bench``: memory and latency against frame count per compressor (see vlc.evaluation.bench)."""
    from vlc.evaluation.bench import main

    main()
