"""Pretrained video LLMs through transformers' own classes and processors.

``build_backbone(family, name_or_path, ...)`` looks the family up in ``FAMILIES`` and loads the
checkpoint (a hub name or a local folder) with ``from_pretrained``; never ``trust_remote_code``.
"""

from __future__ import annotations

from collections.abc import Callable

from vlc.backbone.base import Backbone
from vlc.backbone.hf import qwen2_5_vl, videollama3

FAMILIES: dict[str, Callable[..., Backbone]] = {
    "qwen2_5_vl": qwen2_5_vl.build,
    "videollama3": videollama3.build,
}


def build_backbone(
    family: str, name_or_path: str, dtype: str = "bfloat16", attn_implementation: str = "auto", **options
) -> Backbone:
    if family not in FAMILIES:
        raise ValueError(f"model.backbone.family={family!r} is unknown; choose one of {sorted(FAMILIES)}")
    return FAMILIES[family](name_or_path, dtype=dtype, attn_implementation=attn_implementation, **options)
