"""What a run does, shared by ``train.py`` and ``eval.py``: build from the composed config, fit,
evaluate, and leave the run directory complete (resolved config, CSV logs, checkpoints,
``metrics.json`` and per-sample ``predictions.jsonl``)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from vlc.model.video_llm import VideoLLM

log = logging.getLogger("vlc")

CONFIG_DIR = Path(os.environ.get("VLC_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


def build_model(cfg: DictConfig) -> VideoLLM:
    """The VideoLLM of a composed config (model group + compressor + prompt + optim)."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    return VideoLLM(
        **model_cfg,
        compressor=OmegaConf.to_container(cfg.compressor, resolve=True) if cfg.get("compressor") else None,
        prompt=OmegaConf.to_container(cfg.prompt, resolve=True) if cfg.get("prompt") else None,
        optim=OmegaConf.to_container(cfg.optim, resolve=True) if cfg.get("optim") else None,
    )


def _instantiate_dict(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_trainer(cfg: DictConfig) -> L.Trainer:
    return hydra.utils.instantiate(
        cfg.trainer, callbacks=_instantiate_dict(cfg.get("callbacks")), logger=_instantiate_dict(cfg.get("logger")) or False
    )


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return round(value, 6) if isinstance(value, float) else value


def write_outputs(out_dir: Path, metrics: dict[str, Any], predictions: list[dict]) -> Path:
    """metrics.json and predictions.jsonl, written to a temp file first so readers never see half a file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: _scalar(v) for k, v in metrics.items()}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    with open(out_dir / "predictions.jsonl.tmp", "w") as f:
        for p in predictions:
            f.write(json.dumps(p) + "\n")
    (out_dir / "predictions.jsonl.tmp").replace(out_dir / "predictions.jsonl")
    return path


def summarize(cfg: DictConfig, model: VideoLLM, stage_metrics: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    compressor = cfg.get("compressor") or {}
    target = compressor.get("_target_", "none") if isinstance(compressor, DictConfig) else "none"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        **{k: _scalar(v) for k, v in stage_metrics.items()},
        **extra,
        "compressor": target.rsplit(".", 1)[-1],
        "seed": cfg.get("seed"),
        "tags": list(cfg.get("tags") or []),
        "trainable_params": trainable,
        "device": str(model.device),
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint; returns the metrics written to metrics.json."""
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = build_model(cfg)
    trainer = build_trainer(cfg)
    OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)

    extra: dict[str, Any] = {}
    best = None
    if cfg.get("train", True):
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path == "last":
            last = out_dir / "checkpoints" / "last.ckpt"
            ckpt_path = str(last) if last.exists() else None
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        extra["train_seconds"] = round(time.perf_counter() - start, 2)
        extra["train_steps"] = int(trainer.global_step)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            extra["train/loss"] = float(loss)
        if trainer.checkpoint_callback is not None and not trainer.fast_dev_run:
            best = trainer.checkpoint_callback.best_model_path or None
    if trainer.fast_dev_run:
        return {**extra, "fast_dev_run": True}

    (val_metrics,) = trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    extra["checkpoint"] = best
    metrics = summarize(cfg, model, val_metrics, extra)
    if cfg.get("test") and getattr(datamodule, "has_test", False):
        (test_metrics,) = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update({k: _scalar(v) for k, v in test_metrics.items()})
    path = write_outputs(out_dir, metrics, model.predictions)
    log.info("metrics: %s", json.dumps({k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}))
    log.info("wrote %s", path)
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``ckpt_path`` (or the config at random init when it is null) on ``split``."""
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path: no checkpoint file at {path}")
        model = VideoLLM.load_from_checkpoint(str(path), map_location="cpu")
    else:
        log.warning("ckpt_path is null: evaluating a randomly initialised model (cost figures only)")
        model = build_model(cfg)
    trainer = build_trainer(cfg)
    OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
    split = cfg.get("split", "val")
    if split == "val":
        (stage_metrics,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    elif split == "test":
        (stage_metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        raise ValueError(f"split={split!r}; choose val or test")
    metrics = summarize(cfg, model, stage_metrics, {"checkpoint": cfg.ckpt_path, "split": split})
    write_outputs(out_dir, metrics, model.predictions)
    return metrics
