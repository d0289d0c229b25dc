"""Check a composed config before anything is built, and say in one paragraph what is wrong.

``train.py`` / ``eval.py`` call ``check_config_or_exit(cfg)`` first: a bad value then costs a
second, not a model load, and reads as one message naming the key, its value and what would be
right (the valid choices or range), not as a stack trace from deep inside a constructor.

What Hydra already reports well is left to it: an unknown group choice (``compressor=nope``)
stops composition with "Could not find 'compressor/nope'" and the list of available options, and
an override of a key that does not exist (``compressor.foo=1``) with "Key 'foo' is not in struct".

What is checked here:

- every ``???`` value still unset (e.g. ``data.train_file`` for ``data=mc_json``);
- the compressor, by building it on the meta device: its constructor checks its own settings
  (a chain, its stages' order), ``build_compressor`` refuses unknown settings and untrusted
  targets; only the spatial kernel against the model's patch grid is a rule of its own here;
- keys added with ``+`` that the data module does not take, and the data settings (one of
  num_frames / fps, on_error, backend, max_skip_fraction, frame_size, the synthetic generator's
  parameters);
- the run: ``seed``, ``trainer.max_steps`` / ``val_check_interval`` / ``precision``, a GPU
  accelerator on a machine without CUDA, the ``optim`` values, and ``ckpt_path``.

The frame count needs no check: no compressor requires T to be divisible by anything. stc/stp
round an odd T up by repeating the last real frame, qformer's sliding windows past the end (or a
T shorter than one window) are masked, moviechat merges whatever its buffer holds at the end, and
vst's last window holds the remainder (tests/test_robustness_config.py runs each at odd and tiny T).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra.utils
from omegaconf import DictConfig, ListConfig, OmegaConf

from vlc.compressors.base import is_int as _is_int
from vlc.compressors.base import is_number as _is_number
from vlc.compressors.base import show as _show


class ConfigError(ValueError):
    """A composed config that cannot run; the message is one paragraph naming every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"invalid config ({len(problems)} problem{'s' if len(problems) > 1 else ''}): "
            + " ".join(p if p.endswith(".") else p + "." for p in problems)
            + " See docs/robustness.md."
        )


def check_config_or_exit(cfg: DictConfig) -> None:
    """``check_config``, printing the message to stderr and exiting with status 2 on a problem."""
    try:
        check_config(cfg)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        if _in_multirun():
            raise  # a sweep records this job as failed and goes on with the others
        raise SystemExit(2) from None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem found in ``cfg``; return None when there is none."""
    problems = [f"{key} is not set (???); give it on the command line, e.g. {key}=<value>"
                for key in sorted(_missing_keys(cfg))]
    data = _plain(cfg.get("data"))
    if isinstance(data, Mapping):
        problems += _check_data(data)
    compressor = _plain(cfg.get("compressor"))
    if isinstance(compressor, Mapping) and compressor:
        problems += _check_compressor(compressor, _backbone_facts(cfg))
    ckpt = cfg.get("ckpt_path") if not OmegaConf.is_missing(cfg, "ckpt_path") else None
    resumable = cfg.get("task_name") != "eval"  # "last" resumes a training run; eval needs a file
    if ckpt == "last" and not resumable:
        problems.append("ckpt_path=last: eval.py evaluates a checkpoint file; give its path "
                        "(e.g. logs/train/runs/<run>/checkpoints/last.ckpt), or null for the config's model")
    elif ckpt not in (None, "last") and not Path(str(ckpt)).expanduser().is_file():
        problems.append(f"ckpt_path={ckpt}: no checkpoint file there (give a .ckpt path"
                        + (", 'last' to resume" if resumable else "") + ", or null)")
    problems += _check_run(cfg)
    if problems:
        raise ConfigError(problems)


# ---- helpers ---------------------------------------------------------------------------------


def _plain(node: Any) -> Any:
    """A node as plain Python, unresolvable or unset values as None (reported elsewhere)."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation that needs a Hydra runtime (e.g. ${hydra:…})
        return OmegaConf.to_container(node, resolve=False)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _missing_keys(cfg: DictConfig) -> set[str]:
    try:
        return {k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra.")}
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve outside Hydra
        return set()


def _unknown_keys(node: Mapping, target: Any, where: str, supplied: tuple[str, ...] = ()) -> list[str]:
    from torch import nn

    try:
        params = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return []
    if isinstance(target, type) and issubclass(target, nn.Module) and target.__init__ is nn.Module.__init__:
        params = {}  # no constructor of its own: nn.Module's *args/**kwargs accept nothing in fact
    elif any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    takes = [name for name in params if name not in ("self", *supplied)]
    return [
        f"{where}.{key}: {getattr(target, '__name__', target)} takes no such setting; "
        + (f"it takes {', '.join(takes)}" if takes else "it takes none")
        for key in node
        if not str(key).startswith("_") and key not in params
    ]


def _backbone_facts(cfg: DictConfig) -> dict[str, int]:
    """Encoder and LLM widths and the patch grid side, where the model config fixes them (model=tiny does)."""
    encoder = _plain(cfg.get("model", {}).get("encoder")) if cfg.get("model") else None
    llm = _plain(cfg.get("model", {}).get("llm")) if cfg.get("model") else None
    facts: dict[str, int] = {}
    width = ((llm or {}).get("config") or {}).get("hidden_size") if isinstance(llm, Mapping) else None
    if isinstance(width, int) and not (llm or {}).get("name_or_path"):
        facts["llm_dim"] = width
    if not isinstance(encoder, Mapping):
        return facts
    kwargs = encoder.get("model_kwargs") or {}
    if isinstance(kwargs.get("embed_dim"), int):
        facts["dim"] = kwargs["embed_dim"]
    patch, size, stride = kwargs.get("patch_size"), encoder.get("img_size"), encoder.get("pool_stride") or 1
    if isinstance(patch, int) and isinstance(size, int) and patch > 0:
        facts["grid"] = -(-(size // patch) // int(stride))
    return facts


# ---- data --------------------------------------------------------------------------------------


def _check_data(data: Mapping) -> list[str]:
    problems: list[str] = []
    target = data.get("_target_")
    if target:
        try:
            problems += _unknown_keys(data, hydra.utils.get_object(target), "data")
        except Exception as error:  # noqa: BLE001
            return [f"data._target_={target} cannot be imported ({type(error).__name__}: {_first_line(error)})"]
    from vlc.data.datamodule import SOURCES
    from vlc.data.video import BACKENDS

    if "source" in data and data["source"] not in SOURCES:
        problems.append(f"data.source={_show(data['source'])}: choose one of {', '.join(SOURCES)}")
    num_frames, fps = data.get("num_frames"), data.get("fps")
    if "num_frames" in data or "fps" in data:
        if (num_frames is None) == (fps is None):
            problems.append(
                f"data.num_frames={_show(num_frames)} and data.fps={_show(fps)}: set exactly one (uniform sampling of "
                f"num_frames frames, or a rate in frames per second with data.max_frames as a cap), the other null"
            )
        elif num_frames is not None and not _is_int(num_frames, 1):
            problems.append(f"data.num_frames={_show(num_frames)}: frames per video, an integer >= 1")
        elif fps is not None and not (_is_number(fps) and fps > 0):
            problems.append(f"data.fps={_show(fps)}: a rate in frames per second, > 0")
    size = data.get("frame_size")
    if size is not None and not (_is_int(size, 1) or (isinstance(size, (list, tuple)) and len(size) == 2
                                                       and all(_is_int(x, 1) for x in size))):
        problems.append(f"data.frame_size={_show(size)}: the side frames are resized to (an integer >= 1), "
                        f"[H, W], or null to keep the video's size")
    if data.get("max_frames") is not None and not _is_int(data["max_frames"], 1):
        problems.append(f"data.max_frames={_show(data['max_frames'])}: a cap >= 1 on fps sampling, or null")
    if "on_error" in data and data["on_error"] not in ("raise", "skip"):
        problems.append(f"data.on_error={_show(data['on_error'])}: choose raise (stop at the first unreadable video) "
                        f"or skip (replace it, up to data.max_skip_fraction)")
    fraction = data.get("max_skip_fraction", 0.0)
    if not (_is_number(fraction) and 0 <= fraction <= 1):
        problems.append(f"data.max_skip_fraction={_show(fraction)}: a fraction in [0, 1]")
    if "backend" in data and data["backend"] not in BACKENDS:
        problems.append(f"data.backend={_show(data['backend'])}: choose one of {', '.join(BACKENDS)}")
    if "batch_size" in data and not _is_int(data["batch_size"], 1):
        problems.append(f"data.batch_size={_show(data['batch_size'])}: an integer >= 1")
    if "num_workers" in data and not _is_int(data["num_workers"], 0):
        problems.append(f"data.num_workers={_show(data['num_workers'])}: an integer >= 0 (0: load in the main process)")
    if data.get("source") == "synthetic" and isinstance(data.get("synthetic"), Mapping):
        from vlc.data.synthetic import ensure_synthetic, _synthetic_params

        defaults = {k: p.default for k, p in inspect.signature(ensure_synthetic).parameters.items() if k != "root"}
        unknown = [k for k in data["synthetic"] if k not in defaults]
        if unknown:
            problems.append(f"data.synthetic.{unknown[0]}: no such generator parameter; they are {', '.join(defaults)}")
        else:
            try:
                _synthetic_params(**{**defaults, **data["synthetic"]})
            except (ValueError, TypeError) as error:
                problems.append(f"data.{error}")
    return problems


# ---- the run: trainer, optimiser, seed -------------------------------------------------------

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64", "bf16", "16")


def _check_run(cfg: DictConfig) -> list[str]:
    """The keys outside data and compressor that a user sets on the command line."""
    problems = []
    seed = cfg.get("seed")
    if not _is_int(seed):
        problems.append(f"seed={_show(seed)}: an integer (the training seed)")
    threads = cfg.get("threads", "auto")
    if not (threads in (None, "auto") or _is_int(threads, 1)):
        problems.append(f"threads={_show(threads)}: torch CPU threads, auto or an integer >= 1")
    trainer = _plain(cfg.get("trainer")) or {}
    if isinstance(trainer, Mapping):
        steps = trainer.get("max_steps", -1)
        if not (_is_int(steps, 1) or steps == -1):
            problems.append(f"trainer.max_steps={_show(steps)}: optimizer steps to train, an integer >= 1 "
                            f"(or -1: train by trainer.max_epochs)")
        interval = trainer.get("val_check_interval")
        if interval is not None and not (_is_int(interval, 1) or (isinstance(interval, float) and 0 < interval <= 1)):
            problems.append(f"trainer.val_check_interval={_show(interval)}: validate every this many training steps "
                            f"(an integer >= 1), or a fraction of an epoch in (0, 1]")
        precision = trainer.get("precision")
        if precision is not None and str(precision) not in PRECISIONS:
            problems.append(f"trainer.precision={_show(precision)}: choose one of {', '.join(PRECISIONS[:6])}")
        accelerator = trainer.get("accelerator")
        if accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                problems.append(f"trainer.accelerator={accelerator} but CUDA is not available on this machine; "
                                f"use trainer=cpu")
    optim = _plain(cfg.get("optim")) or {}
    if isinstance(optim, Mapping):
        rules = (
            ("lr", lambda v: _is_number(v) and v > 0, "the learning rate, a number > 0 (e.g. 1.0e-3)"),
            ("weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
            ("warmup_steps", lambda v: v is None or _is_int(v, 0), "linear warm-up steps, an integer >= 0"),
            ("warmup_ratio", lambda v: v is None or (_is_number(v) and 0 <= v < 1),
             "a fraction of all steps in [0, 1), or null"),
            ("min_lr_ratio", lambda v: _is_number(v) and 0 <= v <= 1, "the final lr / lr, in [0, 1]"),
            ("compression_warmup_steps", lambda v: v is None or _is_int(v, 0), "an integer >= 0"),
            ("betas", lambda v: isinstance(v, (list, tuple)) and len(v) == 2
             and all(_is_number(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.9, 0.98]"),
        )
        for key, ok, what in rules:
            if key in optim and not ok(optim[key]):
                problems.append(f"optim.{key}={_show(optim[key])}: {what}")
    return problems


# ---- compressors -------------------------------------------------------------------------------

# A width every head count up to 16 divides, for checks where the model config does not fix the
# encoder width (a hub model): dimension rules then cannot misfire, and the meta device allocates nothing.
ANY_WIDTH = 720720


def _check_compressor(node: Mapping, facts: dict[str, int]) -> list[str]:
    """Build the compressor on the meta device: its constructor checks its own settings (and a
    chain its stages' order), so what is checked here is exactly what would fail later. Unknown
    settings and untrusted targets are refused by ``build_compressor`` the same way."""
    import torch

    from vlc.compressors.base import UntrustedTargetError, build_compressor, compressor_class

    target = node.get("_target_")
    if not target:
        return ["compressor has no _target_ (the compressor class to build)"]
    try:
        cls = compressor_class(target)
    except UntrustedTargetError as error:
        return [f"compressor._target_={target}: {error}; the compressor group's choices are "
                f"{', '.join(_group_options('compressor'))}"]
    from vlc.compressors.base import placement

    try:
        sits = placement(node)
    except ValueError as error:
        return [str(error)]
    width = facts.get("llm_dim" if sits == "projected" else "dim", ANY_WIDTH)
    extra = dict(out_dim=facts.get("llm_dim", ANY_WIDTH)) if sits == "projector" else {}
    try:
        with torch.device("meta"):
            build_compressor(dict(node), dim=width, pixel_std=(0.5,) * 3, question_dim=facts.get("llm_dim", ANY_WIDTH),
                             **extra)
    except (ValueError, TypeError) as error:
        return [str(error)]
    problems = []
    # The one rule that needs the model's patch grid, which a compressor never sees when it is built.
    for stage in [node, *(node.get("stages") or [])]:
        kernel, padding = stage.get("kernel"), stage.get("padding")
        if "grid" in facts and isinstance(kernel, (list, tuple)) and len(kernel) == 3 and isinstance(padding, int):
            if facts["grid"] + 2 * padding < max(kernel[1:]):
                needed = math.ceil((max(kernel[1:]) - facts["grid"]) / 2)
                problems.append(f"compressor.kernel={list(kernel)}: the {facts['grid']}x{facts['grid']} patch grid "
                                f"(+{padding} padding) is smaller than the spatial kernel; use padding >= {needed}")
    return problems


def _group_options(group: str) -> list[str]:
    from vlc.run import CONFIG_DIR

    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
