"""`compressor=chain`: several compressors run in order, e.g. diffp → pool, or moviechat → qformer
(the original MovieChat pipeline), or diffp → vst.

Each stage is a compressor config of its own (``_target_`` + ``_partial_``), built with the same
``dim``: every compressor's output keeps its input width, so the next stage gets what it expects.

``pixels`` reach a stage only while the frames still are the frames the pixels show: once a stage
merges or drops frames (its output's frame count or timestamps differ from its input's), later
stages get ``pixels=None``. A pixel-based stage (diffp) after such a stage fails with a clear
error instead of comparing the wrong frames.

If the last stage works inside the LLM (it has ``prefill``, like ``vst``), the chain is one too:
it exposes that stage's ``attach`` and ``prefill``, and ``streaming = False`` because the stages
before it need the whole video at once. Its ``forward`` (identity for vst) still runs last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from vlc.compressors import call_with_dim
from vlc.tokens import FrameTokens


def build_stage(stage: Any, dim: int, **backbone: Any) -> nn.Module:
    """A stage given as a built module, a partial (Hydra's recursive instantiation) or a config."""
    if isinstance(stage, DictConfig):
        stage = OmegaConf.to_container(stage, resolve=True)
    if isinstance(stage, Mapping):
        if "_target_" not in stage:
            raise ValueError(f"compressor.stages: a stage has no _target_: {stage}")
        stage = hydra.utils.instantiate(stage)
    return call_with_dim(stage, dim, **backbone)


def same_frames(before: FrameTokens, after: FrameTokens) -> bool:
    """Whether ``after`` still has one frame per frame of ``before`` (so the pixels still match)."""
    return after.times.shape == before.times.shape and torch.equal(after.times, before.times)


class CompressorChain(nn.Module):
    """Run ``stages`` in order; the output of one is the input of the next."""

    def __init__(self, dim: int, stages: Sequence[Any], **backbone: Any) -> None:
        # backbone: what the model knows (pixel_std, question_dim), passed on to the stages that ask.
        super().__init__()
        if len(stages) == 0:
            raise ValueError("compressor.stages is empty: list at least one compressor config")
        self.stages = nn.ModuleList(build_stage(s, dim, **backbone) for s in stages)
        for i, stage in enumerate(self.stages[:-1]):
            if hasattr(stage, "prefill"):
                raise ValueError(
                    f"compressor.stages[{i}] ({type(stage).__name__}) compresses inside the LLM; "
                    "only the last stage may"
                )
        last = self.stages[-1]
        if hasattr(last, "prefill"):
            # The chain becomes an in-LLM compressor: the model sees attach/prefill on it.
            self.attach = last.attach
            self.prefill = last.prefill
            if hasattr(last, "on_compression_start"):
                self.on_compression_start = last.on_compression_start
            self.streaming = False

    def forward(self, x: FrameTokens, pixels: Tensor | None = None) -> FrameTokens:
        for stage in self.stages:
            out = stage(x, pixels)
            if pixels is not None and not same_frames(x, out):
                pixels = None
            x = out
        return x
