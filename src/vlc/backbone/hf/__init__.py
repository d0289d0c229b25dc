"""Pretrained video LLMs as vlc Backbones, loaded through transformers' own classes.

A model config names a family and a checkpoint, never code (a checkpoint must not pick what runs)::

    backbone:
      family: llava_onevision
      name_or_path: llava-hf/llava-onevision-qwen2-0.5b-ov-hf   # hub name or local folder
      dtype: bfloat16
      attn_implementation: auto

``FAMILIES`` maps a family to "module:Class"; the module is imported only when the family is built,
so importing vlc never imports every model's code. Each class has
``from_pretrained(name_or_path, dtype, attn_implementation, **options)``. docs/models.md describes
each family's layout and which compressors run on it.
"""

from __future__ import annotations

import importlib

from vlc.backbone.base import Backbone

FAMILIES: dict[str, str] = {
    "llava_onevision": "vlc.backbone.hf.llava_onevision:LlavaOnevisionBackbone",
    "llava_next_video": "vlc.backbone.hf.llava_next_video:LlavaNextVideoBackbone",
    "videoxl": "vlc.backbone.hf.videoxl:VideoXLBackbone",
    "qwen2_5_vl": "vlc.backbone.hf.qwen2_5_vl:Qwen25VLBackbone",
    "videollama3": "vlc.backbone.hf.videollama3:VideoLLaMA3Backbone",
}


def family_class(family: str) -> type[Backbone]:
    if family not in FAMILIES:
        raise ValueError(f"backbone.family={family!r} is not a known family; choose one of {sorted(FAMILIES)}")
    module, name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), name)


def build_backbone(
    family: str,
    name_or_path: str,
    dtype: str = "bfloat16",
    attn_implementation: str = "auto",
    **options,
) -> Backbone:
    """Load ``name_or_path`` (hub name or local folder) as the ``family``'s Backbone. ``options`` are
    the family's own settings (e.g. ``frames_per_pass``); an unknown one is an error."""
    return family_class(family).from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=attn_implementation, **options
    )
