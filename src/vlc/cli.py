"""Console entry points: ``vlc-train`` and ``vlc-eval`` (the same as ``python train.py`` / ``eval.py``), and
``vlc-bench`` (the same as ``python -m vlc.evaluation.bench``)."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from vlc.run import CONFIG_DIR

# Third-party notices that say nothing about the run: Lightning's advert for its logger service
# and a deprecation inside Lightning's own use of torch's pytree.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoTips())


def _run_or_exit(fn, cfg: DictConfig):
    """``fn(cfg)``; a data error (an annotation, a video, the skip limit, a refused checkpoint) is
    printed as one paragraph naming the file, with exit status 2, as config errors are."""
    from vlc.compressors.base import UntrustedTargetError
    from vlc.config_check import _in_multirun
    from vlc.data.annotations import AnnotationError
    from vlc.data.datamodule import SkipLimitError
    from vlc.data.video import VideoReadError

    try:
        return fn(cfg)
    except (AnnotationError, VideoReadError, SkipLimitError, UntrustedTargetError) as error:
        if _in_multirun():
            raise  # a sweep records this job as failed and goes on with the others
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    from vlc.config_check import check_config_or_exit
    from vlc.run import train

    check_config_or_exit(cfg)  # a bad value: one paragraph on stderr and exit status 2, before anything is built

    metrics = _run_or_exit(train, cfg)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    from vlc.config_check import check_config_or_exit
    from vlc.run import evaluate

    check_config_or_exit(cfg)

    _run_or_exit(evaluate, cfg)


def bench_main() -> None:
    """``vlc-bench``: memory and latency against frame count per compressor (see vlc.evaluation.bench)."""
    from vlc.evaluation.bench import main

    main()
