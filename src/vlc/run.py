"""What a run does, shared by ``train.py`` and ``eval.py``: build from the composed config, fit,
evaluate, and leave the run directory complete (resolved config, CSV logs, checkpoints,
``metrics.json`` and per-sample ``predictions.jsonl``)."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vlc.compressors.base import config_targets, trust
from vlc.evaluation.records import summarize
from vlc.model.video_llm import VideoLLM, remap_state_dict

log = logging.getLogger("vlc")

CONFIG_DIR = Path(os.environ.get("VLC_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def configure_threads(cfg: DictConfig) -> int:
    """torch's intra-op CPU threads for this run (``threads``): ``auto`` gives ``OMP_NUM_THREADS`` when
    it is set, else the usable CPUs less one per data-loader worker (decoding in a worker needs a
    core of its own) and less those other processes keep busy, at least 1; a number is taken as it
    is. torch's own default counts the machine's cores, not what the process may use (a container's
    quota, its affinity mask) or what is free. The count is recorded in metrics.json (``threads``):
    results move by float rounding with it."""
    setting = cfg.get("threads", "auto")
    workers = int(cfg.get("data", {}).get("num_workers") or 0) if cfg.get("data") else 0
    if setting not in (None, "auto"):
        threads, why = int(setting), f"threads={setting}"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():  # the user's own choice for this shell
        threads, why = max(1, int(os.environ["OMP_NUM_THREADS"])), "threads=auto, OMP_NUM_THREADS"
    else:
        busy = busy_cpus()
        threads = max(1, usable_cpus() - workers - busy)
        why = f"threads=auto, {usable_cpus()} usable CPUs, {busy} busy, {workers} data workers"
    torch.set_num_threads(threads)
    log.info("torch CPU threads: %d (%s)", threads, why)
    return threads


def busy_cpus(window: float = 0.3) -> int:
    """CPUs other processes keep busy now, rounded: the machine's non-idle share of CPU time over
    ``window`` seconds (``/proc/stat``; this process is idle meanwhile) times its CPUs, else the 1-minute
    load average, which still counts a job that ended a minute ago (a ``pip install`` just before the
    run). On a shared machine a thread more than the free cores is far from free: torch's threads
    wait on each other while the cores are taken (40 steps of vst_ratio16 with two other jobs on 2
    cores: 94-110 s at 2 threads, 30-34 s at 1)."""
    def cpu_times() -> tuple[int, int]:  # (busy, total) jiffies over all CPUs
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])  # guest time is already in user

    try:
        busy0, total0 = cpu_times()
        time.sleep(window)
        busy1, total1 = cpu_times()
        if total1 > total0:
            return int((busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1) + 0.5)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        return 0


def fit_warmup_to_run(cfg: DictConfig) -> DictConfig:
    """A run no longer than its uncompressed warm-up (``model.uncompressed_steps`` ≥ ``trainer.max_steps``)
    would never train its compressor, yet validate with it: the warm-up is cut to half the run, with
    a warning naming both keys."""
    warm = int(cfg.get("model", {}).get("uncompressed_steps") or 0) if cfg.get("model") else 0
    steps = int(cfg.get("trainer", {}).get("max_steps") or -1) if cfg.get("trainer") else -1
    if 0 < steps <= warm and cfg.get("compressor") and "none.Identity" not in str(cfg.compressor.get("_target_")):
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.model.uncompressed_steps = steps // 2
        log.warning("model.uncompressed_steps=%d >= trainer.max_steps=%d would never train the compressor: "
                    "the uncompressed warm-up is cut to %d steps (set model.uncompressed_steps to choose)",
                    warm, steps, steps // 2)
    return cfg


def build_model(cfg: DictConfig) -> VideoLLM:
    """The VideoLLM of a composed config (model group + compressor + prompt + optim).

    The config is the user's own, so the compressor it names is trusted (a checkpoint's is not:
    ``load_eval_model``)."""
    compressor = OmegaConf.to_container(cfg.compressor, resolve=True) if cfg.get("compressor") else None
    trust([*config_targets(compressor), *(cfg.get("trusted_compressors") or [])])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    return VideoLLM(
        **model_cfg,
        compressor=compressor,
        prompt=OmegaConf.to_container(cfg.prompt, resolve=True) if cfg.get("prompt") else None,
        optim=OmegaConf.to_container(cfg.optim, resolve=True) if cfg.get("optim") else None,
    )


def _instantiate_dict(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` with the configured callbacks and loggers.

    With ``global_batch_size`` set, gradient accumulation is derived from it: samples per optimizer
    step = data.batch_size × world size × accumulate_grad_batches, whatever the device count."""
    loggers = _instantiate_dict(cfg.get("logger"))
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    if not loggers:  # logger=none: a learning-rate monitor has nowhere to write (Lightning refuses to start)
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    interval, steps = trainer.val_check_interval, trainer.max_steps
    if isinstance(interval, int) and 0 < steps < interval:
        # A run shorter than one interval would never validate, so it would keep no best checkpoint
        # and write no validation figures: it validates once, at its last step.
        log.info("trainer.max_steps=%d < trainer.val_check_interval=%d: validating at step %d", steps, interval, steps)
        trainer.val_check_interval = steps
    if cfg.get("global_batch_size"):
        trainer.accumulate_grad_batches = accumulation_steps(
            int(cfg.global_batch_size), int(cfg.data.batch_size), trainer.world_size,
            configured=int(cfg.trainer.get("accumulate_grad_batches") or 1),
        )
    return trainer


def accumulation_steps(global_batch_size: int, batch_size: int, world_size: int, configured: int = 1) -> int:
    """global_batch_size / (batch_size × world_size); an error names the keys when it does not divide."""
    per_step = batch_size * world_size
    if global_batch_size < per_step or global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of data.batch_size ({batch_size}) x "
            f"world size ({world_size}) = {per_step}; choose a multiple of {per_step} or change data.batch_size"
        )
    steps = global_batch_size // per_step
    if configured not in (1, steps):
        raise ValueError(
            f"trainer.accumulate_grad_batches={configured} contradicts global_batch_size={global_batch_size} "
            f"(which gives {steps}); set only one of them"
        )
    return steps


def init_weights(model: VideoLLM, path: str) -> None:
    """Copy the weights of a checkpoint into ``model`` (tensors of matching name and shape), as a new
    stage starts from the last one: parameters the checkpoint lacks (e.g. vst's beacons after a
    stage without them) keep their fresh initialisation. Nothing else of the old run is restored,
    and nothing but tensors is read (``weights_only``: a pickled object in the file is refused)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"init_from: no checkpoint file at {file}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"init_from={file}: refused, the file holds more than tensors and plain values "
                         f"({str(error).splitlines()[0][:200]})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"init_from={file}: not a Lightning checkpoint (no state_dict)")
    state = remap_state_dict(checkpoint["state_dict"])
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if mismatched:
        raise ValueError(f"init_from={path}: shapes differ for {mismatched[:5]} (a different model config?)")
    model.load_state_dict(matched, strict=False)
    log.info("init_from %s: %d tensors loaded, %d kept from initialisation",
             file, len(matched), len(own) - len(matched))
    # A compressor that derives its parameters from the LLM (vst copies q/k/v and the eos embedding,
    # as Video-XL copies them from the pretrained model) re-derives them from the *loaded* LLM when
    # the checkpoint has none of its own.
    if not any(k.startswith("pipeline.compressor.") for k in matched):
        model.compressor.on_compression_start(model.backbone.llm, model.backbone.tokenizer)
        log.info("init_from: %s re-derived from the loaded LLM", type(model.compressor).__name__)


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


def summarize_run(cfg: DictConfig, model: VideoLLM, stage_metrics: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
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
        "threads": torch.get_num_threads(),
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then evaluate the best checkpoint; returns the metrics written to metrics.json."""
    out_dir = Path(cfg.paths.output_dir)
    configure_threads(cfg)
    cfg = fit_warmup_to_run(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = build_model(cfg)
    if cfg.get("init_from"):
        init_weights(model, cfg.init_from)
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:  # under DDP every rank runs this function; one writes the run's files
        OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)

    extra: dict[str, Any] = {}
    best = None
    if cfg.get("train", True):
        # ckpt_path=last is Lightning's own: the newest last*.ckpt of the ModelCheckpoint directory
        # (${paths.output_dir}/checkpoints), so resume with hydra.run.dir=<the run directory>; a run
        # with no last checkpoint yet starts from scratch (docs/scaling.md).
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        extra["train_seconds"] = round(time.perf_counter() - start, 2)
        extra["train_steps"] = int(trainer.global_step)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            extra["train/loss"] = float(loss)
        if trainer.checkpoint_callback is not None and not trainer.fast_dev_run:
            best = trainer.checkpoint_callback.best_model_path or None
    if trainer.fast_dev_run:
        return {**extra, "fast_dev_run": True}

    if _validates(datamodule, trainer):
        (val_metrics,) = trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    else:  # data.val_file=null or trainer.limit_val_batches=0: a training-only run
        log.warning("no validation split (or trainer.limit_val_batches=0): metrics.json holds training figures only")
        val_metrics, model.predictions = {}, []
        best = best or getattr(trainer.checkpoint_callback, "last_model_path", None) or None
    extra["checkpoint"] = best
    extra.update(skip_report(datamodule))
    metrics = summarize_run(cfg, model, val_metrics, extra)
    if cfg.get("test") and getattr(datamodule, "has_test", False):
        (test_metrics,) = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update({k: _scalar(v) for k, v in test_metrics.items()})
    if trainer.is_global_zero:
        path = write_outputs(out_dir, metrics, model.predictions)
        log.info("metrics: %s", json.dumps({k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}))
        log.info("wrote %s", path)
    return metrics


def _validates(datamodule: Any, trainer: L.Trainer) -> bool:
    return bool(getattr(datamodule, "has_val", True)) and trainer.limit_val_batches != 0


def skip_report(datamodule: Any) -> dict[str, Any]:
    """Unreadable videos under data.on_error=skip (training: replaced; evaluation: left out):
    counted and named in metrics.json, never silent."""
    skipped = getattr(datamodule, "skipped", None)
    if skipped is None:
        return {}
    return {"data/skipped": len(skipped), "data/skipped_files": sorted(skipped)[:100]}


def load_eval_model(cfg: DictConfig) -> VideoLLM:
    """``ckpt_path``'s model, or the config's at random init when it is null (cost figures only).

    The prompt is the checkpoint's (or PromptBuilder's defaults); non-null keys of the eval config's
    ``prompt`` replace it, e.g. ``prompt.answer_style=letter`` for MVBench's letter scoring. A
    checkpoint's compressor is built only if it is one of vlc's, or listed in ``trusted_compressors``.
    """
    prompt = {k: v for k, v in (OmegaConf.to_container(cfg.get("prompt") or {}, resolve=True)).items() if v is not None}
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path: no checkpoint file at {path}")
        trust(cfg.get("trusted_compressors") or [])
        model = VideoLLM.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)
        settings = cfg.get("ckpt_compressor")
        if settings:
            model.with_compressor(OmegaConf.to_container(settings, resolve=True))
        if prompt:
            model.backbone.prompt = model.backbone.prompt.replace(**prompt)
        return model
    if cfg.get("ckpt_compressor"):
        raise ValueError("ckpt_compressor changes a checkpoint's compressor, but ckpt_path is null: "
                         "set the compressor group instead (e.g. compressor=vst compressor.ratio=4)")
    log.warning("ckpt_path is null: evaluating the config's model without a vlc checkpoint "
                "(pretrained weights where the model config loads them, else random: cost figures only)")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.prompt = prompt
    return build_model(cfg)


def build_eval_trainer(cfg: DictConfig) -> L.Trainer:
    """A Trainer that only evaluates: ``cfg.trainer``'s device, devices and precision, a progress bar
    with rate and ETA, no logger and no checkpoints."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    t = cfg.trainer
    return L.Trainer(
        accelerator=t.get("accelerator", "cpu"), devices=t.get("devices", 1), precision=t.get("precision", "32-true"),
        strategy=t.get("strategy", "auto"), logger=False, enable_checkpointing=False, enable_model_summary=False,
        callbacks=[TQDMProgressBar(refresh_rate=1)], inference_mode=True,
        limit_val_batches=t.get("limit_val_batches", 1.0), limit_test_batches=t.get("limit_test_batches", 1.0),
        default_root_dir=cfg.paths.output_dir,
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``ckpt_path`` (or the config's model when it is null), through the same
    ``VideoLLM`` validation and test steps training uses.

    mode=eval: the data config's ``split`` (val | test): accuracy overall and per task, and cost.
    mode=niah: the needle-in-a-haystack grid of ``niah`` (see vlc.evaluation.niah).
    Writes metrics.json and predictions.jsonl (one line per sample, with its cost) into the run dir.
    """
    out_dir = Path(cfg.paths.output_dir)
    configure_threads(cfg)
    L.seed_everything(cfg.seed, workers=True)
    model = load_eval_model(cfg)
    trainer = build_eval_trainer(cfg)
    OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
    mode = cfg.get("mode", "eval")
    extra: dict[str, Any] = {"checkpoint": cfg.ckpt_path, "mode": mode}
    if cfg.get("ckpt_compressor"):
        extra["ckpt_compressor"] = OmegaConf.to_container(cfg.ckpt_compressor, resolve=True)
    start = time.perf_counter()
    if mode == "niah":
        from vlc.evaluation.niah import annotate, cell_rows, niah_loaders, plot_heatmap, write_csv

        niah = cfg.niah
        loaders = niah_loaders(
            Path(cfg.paths.data_dir) / "synthetic", list(niah.lengths), list(niah.depths), int(niah.per_cell),
            frame_size=int(niah.frame_size), fps=float(niah.fps), seed=int(niah.seed), batch_size=int(niah.batch_size),
            backend=cfg.data.get("backend", "decord"), lazy=bool(cfg.data.get("lazy_decode", False)),
        )
        trainer.validate(model, dataloaders=loaders, verbose=False)
        records = annotate(model.predictions)
        rows = cell_rows(records)
        write_csv(rows, out_dir / "niah.csv")
        mean = sum(r["correct"] for r in records) / len(records)
        plot_heatmap(rows, out_dir / "niah_heatmap.png",
                     title=f"{type(model.compressor).__name__}: mean accuracy {mean:.3f}")
        stage_metrics = summarize(records, prefix="niah")
        stage_metrics["niah/acc_cell_mean"] = sum(r["accuracy"] for r in rows) / len(rows)
        stage_metrics["niah/cells"] = len(rows)
    elif mode == "eval":
        split = cfg.get("split", "val")
        if split not in ("val", "test"):
            raise ValueError(f"split={split!r}; choose val or test")
        datamodule = hydra.utils.instantiate(cfg.data)
        if split == "val":
            trainer.validate(model, datamodule=datamodule, verbose=False)
        else:
            trainer.test(model, datamodule=datamodule, verbose=False)
        records = model.predictions
        stage_metrics = summarize(records, prefix=split)
        extra["split"] = split
        extra.update(skip_report(datamodule))
    else:
        raise ValueError(f"mode={mode!r}; choose eval or niah")
    extra["eval_seconds"] = round(time.perf_counter() - start, 2)
    metrics = summarize_run(cfg, model, stage_metrics, extra)
    # The model's own compressor: a checkpoint's, not the eval config's default.
    metrics.update(compressor=type(model.compressor).__name__, device=str(model.device))
    if trainer.is_global_zero:
        write_outputs(out_dir, metrics, records)
        log.info("metrics: %s", json.dumps({k: v for k, v in metrics.items() if k.endswith("/acc")}))
        log.info("wrote %s", out_dir / "metrics.json")
    return metrics
