"""Check a composed config before anything is built, and say in one paragraph what is wrong.

``train.py`` / ``eval.py`` call ``check_config_or_exit(cfg)`` first: a bad value then costs a
second, not a model load, and reads as one message naming the key, its value and what would be
right (the valid choices or range), not as a stack trace from deep inside a constructor.

What Hydra already reports well is left to it: an unknown group choice (``compressor=nope``)
stops composition with "Could not find 'compressor/nope'" and the list of available options, and
an override of a key that does not exist (``compressor.foo=1``) with "Key 'foo' is not in struct".

What is checked here:

- every ``???`` value still unset (e.g. ``data.train_file`` for ``data=mc_json``);
- keys added with ``+`` that the target (``data``, ``compressor`` and each chain stage) does not take;
- the compressor's settings, per method: the ranges and choices its constructor enforces
  (``vst``: 1 ≤ ratio ≤ window and ratios non-empty; ``pool``: stride ≥ 1; ``qformer``: heads
  divides the encoder width, 1 ≤ stride ≤ window when sliding; ``moviechat``: 1 ≤ merge_to ≤
  short_len, merge_to ≤ long_len ≤ num_base_pos²; …) and, where the model config fixes the patch
  grid, that a spatial kernel fits it;
- the order of ``chain`` stages (a stage that needs a patch grid after one that removes it; diffp,
  which reads pixels, after a stage that merges or drops frames; an in-LLM stage before the last);
- the data settings (one of num_frames / fps, on_error, backend, max_skip_fraction, the synthetic
  generator's parameters) and ``ckpt_path``.

The frame count needs no check: no compressor requires T to be divisible by anything. stc/stp
round an odd T up by repeating the last real frame, qformer's sliding windows past the end (or a
T shorter than one window) are masked, moviechat merges whatever its buffer holds at the end, and
vst's last window holds the remainder (tests/test_robustness_config.py runs each at odd and tiny T).

The compressors' own ``__init__`` checks stay the last line of defence for Python callers; a test
holds the two to the same verdict.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


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
        problems += _check_compressor(compressor, "compressor", _backbone_facts(cfg), _choice("compressor"))
    ckpt = cfg.get("ckpt_path") if not OmegaConf.is_missing(cfg, "ckpt_path") else None
    if ckpt not in (None, "last") and not Path(str(ckpt)).expanduser().is_file():
        problems.append(f"ckpt_path={ckpt}: no checkpoint file there (give a .ckpt path, 'last' to resume, or null)")
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


def _choice(group: str) -> str | None:
    """The group's choice on the command line (``compressor=vst`` → "vst"), when Hydra ran."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except Exception:  # noqa: BLE001 - composed without Hydra's runtime (tests, notebooks)
        return None


def _locate(target: str) -> Any:
    """The object a dotted ``_target_`` names (as Hydra resolves it, without Hydra's error logging)."""
    parts = str(target).split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name and module.startswith(error.name):
                continue  # this prefix is not a module: try a shorter one
            raise  # the module exists but a dependency of it is missing: say so as it is
        rest = parts[cut:]
        for name in rest:
            if not hasattr(obj, name):
                raise ImportError(f"module {module} has no {'.'.join(rest)!r}")
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


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
    """Encoder width and patch grid side, where the model config fixes them (model=tiny does)."""
    encoder = _plain(cfg.get("model", {}).get("encoder")) if cfg.get("model") else None
    facts: dict[str, int] = {}
    if not isinstance(encoder, Mapping):
        return facts
    kwargs = encoder.get("model_kwargs") or {}
    if isinstance(kwargs.get("embed_dim"), int):
        facts["dim"] = kwargs["embed_dim"]
    patch, size, stride = kwargs.get("patch_size"), encoder.get("img_size"), encoder.get("pool_stride") or 1
    if isinstance(patch, int) and isinstance(size, int) and patch > 0:
        facts["grid"] = -(-(size // patch) // int(stride))
    return facts


def _show(value: Any) -> str:
    """A value as it is written on the command line (null, true, 'text', 3)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- data --------------------------------------------------------------------------------------


def _check_data(data: Mapping) -> list[str]:
    problems: list[str] = []
    target = data.get("_target_")
    if target:
        try:
            problems += _unknown_keys(data, _locate(target), "data")
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


# ---- compressors -------------------------------------------------------------------------------

# What the model supplies to a compressor's constructor (see vlc.compressors.build_compressor).
SUPPLIED = ("dim", "pixel_std", "question_dim")


def _check_compressor(node: Mapping, where: str, facts: dict[str, int], choice: str | None) -> list[str]:
    target = node.get("_target_")
    if not target:
        return [f"{where} has no _target_ (the compressor class to build)"]
    try:
        cls = _locate(target)
    except Exception as error:  # noqa: BLE001
        return [f"{where}._target_={target} cannot be imported ({type(error).__name__}: {_first_line(error)}); "
                f"the compressor group's choices are {', '.join(_group_options('compressor'))}"]
    problems = _unknown_keys(node, cls, where, supplied=SUPPLIED)
    if problems:
        return problems
    rule = RULES.get(f"{cls.__module__}.{cls.__qualname__}")
    if rule is None:
        return []
    values = {**_defaults(cls), **{k: v for k, v in node.items() if not str(k).startswith("_")}}
    label = choice or cls.__name__
    return [f"{where}.{msg}" if not msg.startswith(where) else msg for msg in rule(values, where, label, facts)]


def _defaults(cls: Any) -> dict[str, Any]:
    params = inspect.signature(cls).parameters.items()
    return {k: p.default for k, p in params if p.default is not inspect.Parameter.empty}


def _group_options(group: str) -> list[str]:
    from vlc.run import CONFIG_DIR

    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def _vst(v: dict, where: str, label: str, facts: dict) -> list[str]:
    from vlc.compressors.vst import ATTENTION

    window, ratio, ratios = v["window"], v["ratio"], list(v["ratios"] or [])
    if not _is_int(window, 1):
        return [f"window={_show(window)} ({label}): raw visual tokens per window, an integer >= 1 "
                f"(Video-XL: 1440 = 10 frames x 144 tokens)"]
    out = []
    if not _is_int(ratio, 1, window):
        out.append(f"ratio={_show(ratio)} ({label}): raw tokens per beacon at inference, an integer in 1..window "
                   f"(window={window}); Video-XL uses 16, and a ratio above the window would leave a window "
                   f"without a beacon")
    if not ratios:
        out.append(f"ratios=[] ({label}): give at least one training ratio, each in 1..window, e.g. [2, 4, 8, 12, 16]")
    bad = [r for r in ratios if not _is_int(r, 1, window)]
    if bad:
        out.append(f"ratios={ratios} ({label}): {bad} outside 1..window (window={window}); lower them or raise window")
    if v["attention"] not in ATTENTION:
        out.append(f"attention={_show(v['attention'])} ({label}): choose one of {', '.join(ATTENTION)}")
    return out


def _pool(v: dict, where: str, label: str, facts: dict) -> list[str]:
    out = []
    if not _is_int(v["stride"], 1):
        out.append(f"stride={_show(v['stride'])} ({label}): pooling factor per grid side, an integer >= 1 "
                   f"(1 = no pooling, 2 = LLaVA-NeXT-Video's 2x2)")
    if v["mode"] not in ("avg", "bilinear"):
        out.append(f"mode={_show(v['mode'])} ({label}): choose avg or bilinear")
    return out


def _qformer(v: dict, where: str, label: str, facts: dict) -> list[str]:
    from vlc.compressors.qformer import SOURCE_MAX_FRAMES

    mode, out = v["mode"], []
    if mode not in SOURCE_MAX_FRAMES:
        return [f"mode={_show(mode)} ({label}): choose one of {', '.join(sorted(SOURCE_MAX_FRAMES))}"]
    for key in ("num_queries", "depth", "num_slots"):
        if not _is_int(v[key], 1):
            out.append(f"{key}={_show(v[key])} ({label}): an integer >= 1")
    if v.get("max_frames") is not None and not _is_int(v["max_frames"], 1):
        out.append(f"max_frames={_show(v['max_frames'])} ({label}): frame-position rows, an integer >= 1 or null")
    if mode != "slots":
        if not _is_int(v["heads"], 1):
            out.append(f"heads={_show(v['heads'])} ({label}): attention heads, an integer >= 1")
        elif "dim" in facts and facts["dim"] % v["heads"]:
            divisors = [h for h in range(1, facts["dim"] + 1) if facts["dim"] % h == 0 and h <= 64]
            out.append(f"heads={v['heads']} ({label}): must divide the encoder width {facts['dim']}; "
                       f"e.g. {', '.join(map(str, divisors[-4:]))}")
    if mode == "sliding":
        window, stride = v["window"], v["stride"]
        if not _is_int(window, 1):
            out.append(f"window={_show(window)} ({label}, sliding): frames per window, an integer >= 1 (TimeChat: 32)")
        elif not _is_int(stride, 1, window):
            out.append(f"stride={_show(stride)} ({label}, sliding): frames between window starts, in 1..window "
                       f"(window={window}), so that every frame is read (TimeChat: 32)")
    if v.get("question_aware") and mode == "slots":
        out.append(f"question_aware=true ({label}): needs mode global or sliding (slots have no self-attention)")
    return out


def _moviechat(v: dict, where: str, label: str, facts: dict) -> list[str]:
    short, merge, long_, base = v["short_len"], v["merge_to"], v["long_len"], v["num_base_pos"]
    if not all(_is_int(x, 1) for x in (short, merge, long_, base)):
        return [f"short_len={_show(short)}, merge_to={_show(merge)}, long_len={_show(long_)}, "
                f"num_base_pos={_show(base)} ({label}): integers >= 1"]
    out = []
    if merge > short:
        out.append(f"merge_to={merge} ({label}): a full short-term buffer of short_len={short} frames is merged "
                   f"down to merge_to, so 1 <= merge_to <= short_len (MovieChat: short_len 18, merge_to 2)")
    if not merge <= long_ <= base**2:
        out.append(f"long_len={long_} ({label}): must be in merge_to..num_base_pos² ({merge}..{base**2}), "
                   f"so that every memory frame has a position")
    if not (_is_number(v["alpha"]) and 0 <= v["alpha"] < 1):
        out.append(f"alpha={_show(v['alpha'])} ({label}): the position expansion weight, in [0, 1) (MovieChat: 0.01)")
    if v["mode"] not in ("global", "breakpoint"):
        out.append(f"mode={_show(v['mode'])} ({label}): choose global or breakpoint")
    elif v["mode"] == "breakpoint" and v.get("breakpoint_time") is None:
        out.append(f"mode=breakpoint ({label}): needs breakpoint_time (seconds)")
    return out


def _diffp(v: dict, where: str, label: str, facts: dict) -> list[str]:
    out = []
    if not _is_int(v["min_tokens"], 1):
        out.append(f"min_tokens={_show(v['min_tokens'])} ({label}): tokens every frame keeps, an integer >= 1")
    if v["fallback"] not in ("most_changed", "first"):
        out.append(f"fallback={_show(v['fallback'])} ({label}): choose most_changed or first")
    if v.get("pixel_std") is not None and len(v["pixel_std"]) != 3:
        out.append(f"pixel_std={_show(v['pixel_std'])} ({label}): one value per RGB channel, or null for the encoder's")
    if not _is_number(v["threshold"]):
        out.append(f"threshold={_show(v['threshold'])} ({label}): a mean absolute pixel change (VideoLLaMA3: 0.1)")
    return out


def _stc(v: dict, where: str, label: str, facts: dict) -> list[str]:
    kernel = list(v["kernel"] or [])
    if len(kernel) != 3 or not all(_is_int(k, 1) for k in kernel):
        return [f"kernel={kernel} ({label}): three positive integers (t, h, w), VideoLLaMA2: [2, 2, 2]"]
    out = []
    if v["downsample"] not in ("conv", "pool"):
        out.append(f"downsample={_show(v['downsample'])} ({label}): choose conv (stc) or pool (stp)")
    padding = v["padding"]
    if not _is_int(padding, 0) or (v["downsample"] == "pool" and 2 * padding > min(kernel)):
        out.append(f"padding={_show(padding)} ({label}): an integer >= 0, at most half the kernel with downsample=pool")
    elif "grid" in facts and facts["grid"] + 2 * padding < max(kernel[1:]):
        needed = math.ceil((max(kernel[1:]) - facts["grid"]) / 2)
        out.append(f"kernel={kernel} ({label}): the {facts['grid']}x{facts['grid']} patch grid (+{padding} padding) "
                   f"is smaller than the spatial kernel; use padding >= {needed}")
    for key, low in (("mlp_depth", 1), ("depth", 0)):
        if not _is_int(v[key], low):
            out.append(f"{key}={_show(v[key])} ({label}): an integer >= {low}")
    return out


def _keyframe(v: dict, where: str, label: str, facts: dict) -> list[str]:
    out = []
    if not (_is_number(v["threshold"]) and -1 <= v["threshold"] <= 1):
        out.append(f"threshold={_show(v['threshold'])} ({label}): a cosine similarity in [-1, 1] "
                   f"(ShareGPT4Video: 0.93)")
    if v.get("max_frames") is not None and not _is_int(v["max_frames"], 1):
        out.append(f"max_frames={_show(v['max_frames'])} ({label}): an integer >= 1 or null")
    return out


def _budget(v: dict, where: str, label: str, facts: dict) -> list[str]:
    out = []
    if not _is_int(v["max_tokens"], 1):
        out.append(f"max_tokens={_show(v['max_tokens'])} ({label}): visual tokens per video, an integer >= 1")
    if v.get("max_stride") is not None and not _is_int(v["max_stride"], 1):
        out.append(f"max_stride={_show(v['max_stride'])} ({label}): an integer >= 1 or null")
    return out


def _llamavid(v: dict, where: str, label: str, facts: dict) -> list[str]:
    return [] if _is_int(v["num_queries"], 1) else [f"num_queries={_show(v['num_queries'])} ({label}): an integer >= 1"]


# Stages that return tokens off the patch grid (FrameTokens.grid None), that need the grid, and
# that may merge or drop frames (after which the pixels no longer match, so diffp cannot follow).
GRIDLESS = {"QFormer", "LLaMAVIDTokens"}
NEEDS_GRID = {"SpatialPool", "DifferentialFramePruning", "TokenBudget", "STCConnector"}
CHANGES_FRAMES = {"MovieChatMemory", "STCConnector", "QFormer", "KeyframeSelection", "TokenBudget"}


def _chain(v: dict, where: str, label: str, facts: dict) -> list[str]:
    stages = list(v.get("stages") or [])
    if not stages:
        return [f"stages=[] ({label}): list at least one compressor config, e.g. diffp then pool"]
    out, names = [], []
    for i, stage in enumerate(stages):
        at = f"{where}.stages[{i}]"
        if not isinstance(stage, Mapping):
            out.append(f"{at}={_show(stage)}: a compressor config with a _target_")
            names.append(None)
            continue
        out += _check_compressor(stage, at, facts, None)
        try:
            names.append(_locate(stage["_target_"]).__name__)
        except Exception:  # noqa: BLE001 - reported by _check_compressor
            names.append(None)
    for i, name in enumerate(names):
        earlier = [n for n in names[:i] if n]
        if name in NEEDS_GRID and any(n in GRIDLESS for n in earlier):
            first = next(n for n in earlier if n in GRIDLESS)
            out.append(f"{where}.stages[{i}] ({name}) needs tokens on a patch grid, but an earlier stage ({first}) "
                       f"returns none; put {name} before it")
        if name == "DifferentialFramePruning" and any(n in CHANGES_FRAMES for n in earlier):
            first = next(n for n in earlier if n in CHANGES_FRAMES)
            out.append(f"{where}.stages[{i}] (diffp) compares pixels of consecutive frames, so it must come before "
                       f"any stage that merges or drops frames ({first})")
        if name == "VisualSummarizationTokens" and i < len(names) - 1:
            out.append(f"{where}.stages[{i}] (vst) compresses inside the LLM, so only the last stage may be vst")
    return out


RULES: dict[str, Callable[[dict, str, str, dict], list[str]]] = {
    "vlc.compressors.vst.VisualSummarizationTokens": _vst,
    "vlc.compressors.pool.SpatialPool": _pool,
    "vlc.compressors.qformer.QFormer": _qformer,
    "vlc.compressors.moviechat.MovieChatMemory": _moviechat,
    "vlc.compressors.diffp.DifferentialFramePruning": _diffp,
    "vlc.compressors.stc.STCConnector": _stc,
    "vlc.compressors.keyframe.KeyframeSelection": _keyframe,
    "vlc.compressors.budget.TokenBudget": _budget,
    "vlc.compressors.llamavid.LLaMAVIDTokens": _llamavid,
    "vlc.compressors.chain.CompressorChain": _chain,
}
