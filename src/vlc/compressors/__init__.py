"""Compressors: each one file, each a small ``nn.Module`` mapping FrameTokens to FrameTokens.

See docs/architecture.md for the contract. ``build_compressor`` turns a config (``_target_`` +
``_partial_: true``) into a module, supplying what the backbone knows to those that ask for it:
``dim`` (the encoder width), ``pixel_std`` (the encoder's pixel normalisation) and ``question_dim``
(the LLM width, for compressors that read the question).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import hydra.utils
from omegaconf import DictConfig, OmegaConf
from torch import nn


def build_compressor(cfg: dict[str, Any] | DictConfig | nn.Module | None, dim: int, **backbone: Any) -> nn.Module:
    from vlc.compressors.none import Identity

    if cfg is None:
        return Identity()
    if isinstance(cfg, nn.Module):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if "_target_" not in cfg:
        raise ValueError(f"compressor config has no _target_: {cfg}")
    made = hydra.utils.instantiate(cfg)
    return call_with_dim(made, dim, **backbone)


def call_with_dim(made: Any, dim: int, **backbone: Any) -> nn.Module:
    """Finish a partial compressor: pass ``dim`` (and any of ``backbone``'s facts) only where its
    constructor takes them and the config did not set them."""
    if isinstance(made, nn.Module):
        return made
    if not callable(made):
        raise TypeError(f"compressor config built {type(made).__name__}, not a module or a partial")
    func = made.func if isinstance(made, functools.partial) else made
    params = inspect.signature(func).parameters
    kw = getattr(made, "keywords", {}) or {}
    given = {"dim": dim, **backbone}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return made(**{k: v for k, v in given.items() if (k in params or takes_all) and kw.get(k) is None})
