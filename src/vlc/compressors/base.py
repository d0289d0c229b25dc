"""The compressor contract, and the one safe way to build a compressor from a config.

Two kinds, declared on the class:

- a **token compressor** maps ``FrameTokens`` to ``FrameTokens`` before the LLM;
- a **cache compressor** also owns the LLM prefill: ``prefill(llm, sink, sink_mask, visual)``
  returns the ``Context`` (vst today, any KV-cache method tomorrow).

What a compressor reads, keeps and where it sits is declared too, so the pipeline never probes:

    sits            "encoder": on the vision encoder's features (width = the encoder's), before
                    the projector; "projected": after the projector (width = the LLM's);
                    "projector": in place of the projector (encoder width in, ``out_dim`` out).
    placements      where a config may put it instead (``compressor.sits=projected``): the
                    parameter-free methods that work at any width run on either side, as
                    LLaVA-family models pool after their projector.
    reads_pixels    forward gets ``pixels`` (B, T, 3, H, W), normalised as the encoder saw them.
    reads_question  forward gets ``question=(embeds (B, Lq, D_llm), mask (B, Lq))``; no other
                    compressor ever sees the question.
    needs_grid      the input must lie on the patch grid (``FrameTokens.grid``).
    keeps_grid      the output still lies on a patch grid.
    keeps_frames    the output has one frame per input frame, at the same times (so the pixels
                    still show those frames).

Lifecycle hooks, one signature each: ``bind(llm, tokenizer)`` once, with the LLM it runs in;
``on_compression_start(llm, tokenizer)`` when training's uncompressed phase ends (or a new
stage's LLM was loaded); ``on_train_step(compressed_steps)`` before every compressed training
step; ``report()`` the per-sample figures of the last forward, logged and kept with each
prediction. Constructors validate their own settings.

Building is the security boundary: a checkpoint's hyperparameters name their compressor by
``_target_``, and a checkpoint must never run code. ``build_compressor`` builds only classes
that are compressors — subclasses of ``Compressor`` defined in ``vlc.compressors`` or in a module
already imported, or a target the running config trusts (``trusted_compressors``) — and refuses
anything else before it is imported or called.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from vlc.tokens import Context, FrameTokens

SITS = ("encoder", "projected", "projector")
BUILTIN_PREFIX = "vlc.compressors."
# Config keys that are not constructor arguments: the class, Hydra's partial flag (accepted and
# ignored) and the placement (``sits``); anything else starting with "_" is refused.
CONFIG_KEYS = ("_target_", "_partial_", "sits")

_REGISTRY: dict[str, type] = {}  # "module.QualName" → class, every Compressor subclass defined so far
_TRUSTED: set[str] = set()  # targets the running config trusts (trusted_compressors, its own compressor)


class Compressor(nn.Module):
    """Base of every compressor; see the module docstring for what each declaration means."""

    kind: ClassVar[str] = "token"
    sits: str = "encoder"  # the class's default; a config may choose another of ``placements``
    placements: ClassVar[tuple[str, ...]] = ()  # () = only ``sits``
    reads_pixels: ClassVar[bool] = False
    reads_question: bool = False  # a setting of some methods (qformer's question_aware): may be per instance
    needs_grid: ClassVar[bool] = False
    keeps_grid: ClassVar[bool] = True
    keeps_frames: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.sits not in SITS:
            raise TypeError(f"{cls.__qualname__}.sits={cls.sits!r}; choose one of {SITS}")
        if cls.kind not in ("token", "cache"):
            raise TypeError(f"{cls.__qualname__}.kind={cls.kind!r}; choose 'token' or 'cache'")
        if cls.__module__ != __name__:  # the abstract kinds themselves are not buildable
            _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls

    def bind(self, llm: nn.Module, tokenizer: Any) -> None:
        """Called once, after construction, with the LLM the compressor runs in."""

    def on_compression_start(self, llm: nn.Module, tokenizer: Any) -> None:
        """Training's uncompressed phase is over (or a new stage loaded the LLM): re-derive what
        the compressor copies from the LLM. Nothing to do for most compressors."""

    def on_train_step(self, compressed_steps: int) -> None:
        """Before every training step that compresses; ``compressed_steps`` counts those before it."""

    def report(self) -> dict[str, list[float]]:
        """Per-sample figures of the last forward (one value per sample), e.g. budget's pool stride."""
        return {}

    def forward(self, x: FrameTokens, pixels: Tensor | None = None,
                question: tuple[Tensor, Tensor] | None = None) -> FrameTokens:
        raise NotImplementedError


class CacheCompressor(Compressor):
    """A compressor that owns the LLM prefill. ``forward`` (run before the projector, like any
    token compressor) is the identity unless the method also acts on tokens.

    streaming: the pipeline may feed ``prefill`` the visual span as a lazy sequence of small
    chunks, encoding frames ``chunk_frames(tokens_per_frame)`` at a time, so only compressed
    state and one chunk of frames live at once."""

    kind: ClassVar[str] = "cache"
    streaming: bool = False

    def chunk_frames(self, tokens_per_frame: int) -> int:
        """Frames to encode per chunk when streaming."""
        return 1

    def forward(self, x: FrameTokens, pixels: Tensor | None = None,
                question: tuple[Tensor, Tensor] | None = None) -> FrameTokens:
        return x

    def prefill(self, llm: nn.Module, sink: Tensor, sink_mask: Tensor,
                visual: Iterable[tuple[Tensor, Tensor]]) -> Context:
        """sink (B, S, D) embedded prefix + mask; visual: (embeds (B, n, D), mask (B, n)) chunks in
        order → the Context (cache keys rotated for positions 0 … len-1)."""
        raise NotImplementedError


# ---- settings checks (every constructor's; config_check reports them before anything is built) ----


def show(value: Any) -> str:
    """A value as it is written on the command line (null, true, 'text', 3)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_settings(problems: list[str]) -> None:
    """Raise one ValueError naming every problem (``compressor.<key>=<value> (<method>): …``)."""
    if problems:
        raise ValueError("; ".join(problems))


# ---- building ---------------------------------------------------------------------------------


class UntrustedTargetError(ValueError):
    """A config (typically a checkpoint's) names something that is not a compressor vlc may build."""


def trust(targets: Iterable[str]) -> None:
    """Allow these ``_target_`` strings to be built from now on (the running config's own choice)."""
    _TRUSTED.update(str(t) for t in targets)


def config_targets(cfg: Any) -> list[str]:
    """Every ``_target_`` string anywhere inside ``cfg`` (dicts and lists, nested)."""
    if isinstance(cfg, (DictConfig,)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    found: list[str] = []
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            if key == "_target_":
                found.append(str(value))
            else:
                found += config_targets(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            found += config_targets(value)
    return found


def compressor_class(target: str) -> type:
    """The compressor class a ``_target_`` names, or ``UntrustedTargetError`` before anything of a
    module outside vlc is imported or anything is called."""
    if not isinstance(target, str) or not target:
        raise UntrustedTargetError(f"compressor _target_ {target!r} is not a class path")
    if target in _REGISTRY:
        return _REGISTRY[target]
    module_name, _, attr = target.rpartition(".")
    if not (target.startswith(BUILTIN_PREFIX) or target in _TRUSTED) or not module_name:
        raise UntrustedTargetError(
            f"refusing to build compressor _target_ {target!r}: only vlc's compressors "
            f"({BUILTIN_PREFIX}*) and subclasses of vlc.compressors.base.Compressor that are already "
            f"imported may be built from a config or checkpoint; to use your own, list it in "
            f"trusted_compressors=[{target}]"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UntrustedTargetError(f"compressor _target_ {target!r}: cannot import {module_name} ({error})") from None
    cls = getattr(module, attr, None)
    # vlc.compressors.vst.torch.load resolves through an imported module: only a Compressor class
    # defined where the target says it is will do.
    if not (inspect.isclass(cls) and issubclass(cls, Compressor) and cls.__module__ == module_name):
        raise UntrustedTargetError(
            f"refusing to build compressor _target_ {target!r}: it is not a subclass of "
            f"vlc.compressors.base.Compressor defined in {module_name}"
        )
    return cls


def placement(cfg: Mapping | None) -> str:
    """Where the compressor of ``cfg`` sits: its ``sits`` key if it has one (checked against the
    class's ``placements``), else the class's own."""
    if not cfg:
        return "encoder"
    cls = compressor_class(cfg["_target_"])
    sits = cfg.get("sits") or cls.sits
    allowed = cls.placements or (cls.sits,)
    if sits not in allowed:
        raise ValueError(f"compressor.sits={show(sits)} ({cls.__name__}): choose one of {', '.join(allowed)}")
    return sits


def build_compressor(cfg: Mapping | DictConfig | nn.Module | None, dim: int | None = None, **facts: Any) -> Compressor:
    """A compressor from its config (``_target_`` + settings; ``_partial_`` is accepted and
    ignored), given what the backbone knows: ``facts`` (``dim``, ``out_dim``, ``pixel_std``,
    ``question_dim``) go to constructors that take them and the config did not set. Nested
    configs are not instantiated here (``chain`` builds its stages through this function)."""
    from vlc.compressors.none import Identity

    if dim is not None:
        facts["dim"] = dim
    if cfg is None:
        return Identity()
    if isinstance(cfg, nn.Module):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping) or "_target_" not in cfg:
        raise ValueError(f"compressor config has no _target_: {cfg}")
    for target in config_targets(cfg):  # a hostile nested target is refused even where it would be inert
        compressor_class(target)
    cls = compressor_class(cfg["_target_"])
    odd = sorted(k for k in cfg if str(k).startswith("_") and k not in CONFIG_KEYS)
    if odd:
        raise ValueError(f"compressor config ({cfg['_target_']}): keys {odd} are not supported; give settings by name")
    settings = {k: v for k, v in cfg.items() if k not in CONFIG_KEYS}
    # A class without a constructor of its own takes nothing (nn.Module's *args/**kwargs accept nothing in fact).
    params = {} if cls.__init__ is nn.Module.__init__ else dict(inspect.signature(cls).parameters)
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in settings if k not in params and not takes_all)
    if unknown:
        known = [k for k in params if k not in facts and params[k].kind is not inspect.Parameter.VAR_KEYWORD]
        raise ValueError(f"compressor.{unknown[0]}: {cls.__name__} takes no such setting; "
                         + (f"it takes {', '.join(known)}" if known else "it takes none"))
    for key, value in facts.items():
        if (key in params or takes_all) and settings.get(key) is None:
            settings[key] = value
    sits = placement(cfg)
    made = cls(**settings)
    if sits != cls.sits:
        made.sits = sits
    return made
