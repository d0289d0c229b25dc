"""`compressor=chain`: several compressors run in order, e.g. diffp → pool, or moviechat → qformer
(the original MovieChat pipeline), or diffp → vst.

Each stage is a compressor config of its own (``_target_`` + settings), built through
``build_compressor`` with the same backbone facts: every compressor's output keeps its input
width, so the next stage gets what it expects. The chain declares what its stages declare
together: it reads pixels or the question if any stage does, keeps the grid or the frames only if
every stage does, and sits where its stages sit (all stages must agree).

The order is checked when the chain is built, from the stages' declarations: a stage that needs a
patch grid after one that removes it, a stage that reads pixels after one that merges or drops
frames, and a cache compressor anywhere but last are refused. ``pixels`` reach a stage only while
the frames still are the frames the pixels show; a pixel-reading stage after a stage that changed
them at run time (its output's timestamps differ) fails with a clear error instead of comparing
the wrong frames.

If the last stage is a cache compressor (``vst``) the chain is one too: it hands that stage's
``prefill`` on, and does not stream, because the stages before it need the whole video at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vlc.compressors.base import Compressor, build_compressor
from vlc.tokens import Context, FrameTokens


def same_frames(before: FrameTokens, after: FrameTokens) -> bool:
    """Whether ``after`` still has one frame per frame of ``before`` (so the pixels still match)."""
    return after.times.shape == before.times.shape and torch.equal(after.times, before.times)


def check_order(stages: Sequence[Compressor]) -> None:
    """Refuse an order of stages that cannot work, naming the stage (``compressor.stages[i]``)."""
    for i, stage in enumerate(stages):
        name = f"compressor.stages[{i}] ({type(stage).__name__})"
        earlier = [type(s).__name__ for s in stages[:i]]
        if stage.kind == "cache" and i < len(stages) - 1:
            raise ValueError(f"{name} compresses inside the LLM, so only the last stage may be a cache compressor")
        gridless = next((n for n, s in zip(earlier, stages) if not s.keeps_grid), None)
        if stage.needs_grid and gridless:
            raise ValueError(f"{name} needs tokens on a patch grid, but an earlier stage ({gridless}) returns none; "
                             f"put {type(stage).__name__} before it")
        reframed = next((n for n, s in zip(earlier, stages) if not s.keeps_frames), None)
        if stage.reads_pixels and reframed:
            raise ValueError(f"{name} compares pixels of consecutive frames, so it must come before any stage that "
                             f"merges or drops frames ({reframed})")
    places = {stage.sits for stage in stages}
    if len(places) > 1:
        raise ValueError(f"compressor.stages sit in different places {sorted(places)}; a chain's stages must "
                         "all sit on the encoder's features, or all on the projected ones")


def build_stage(i: int, stage: Any, dim: int, **backbone: Any) -> Compressor:
    try:
        return build_compressor(stage, dim=dim, **backbone)
    except ValueError as error:
        raise ValueError(f"compressor.stages[{i}]: {error}") from None


class CompressorChain(Compressor):
    """Run ``stages`` in order; the output of one is the input of the next."""

    def __init__(self, dim: int, stages: Sequence[Any], **backbone: Any) -> None:
        # backbone: what the model knows (pixel_std, question_dim, …), passed on to the stages that ask.
        super().__init__()
        if len(stages) == 0:
            raise ValueError("compressor.stages=[] (chain): list at least one compressor config, e.g. diffp then pool")
        self.stages = nn.ModuleList(build_stage(i, s, dim, **backbone) for i, s in enumerate(stages))
        check_order(list(self.stages))
        last = self.stages[-1]
        # What the chain is, from its stages (instance values of the class declarations).
        self.kind = last.kind
        self.sits = last.sits
        self.reads_pixels = any(s.reads_pixels for s in self.stages)
        self.reads_question = any(s.reads_question for s in self.stages)
        self.needs_grid = any(s.needs_grid for s in self.stages)  # check_order: only where the grid still is
        self.keeps_grid = all(s.keeps_grid for s in self.stages)
        self.keeps_frames = all(s.keeps_frames for s in self.stages)
        self.streaming = False  # the stages before a cache compressor need the whole video at once

    def bind(self, llm: nn.Module, tokenizer: Any) -> None:
        for stage in self.stages:
            stage.bind(llm, tokenizer)

    def on_compression_start(self, llm: nn.Module, tokenizer: Any) -> None:
        for stage in self.stages:
            stage.on_compression_start(llm, tokenizer)

    def on_train_step(self, compressed_steps: int) -> None:
        for stage in self.stages:
            stage.on_train_step(compressed_steps)

    def report(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for stage in self.stages:
            out.update(stage.report())
        return out

    def chunk_frames(self, tokens_per_frame: int) -> int:
        return 1

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        for stage in self.stages:
            out = stage(x, pixels if stage.reads_pixels else None, question if stage.reads_question else None)
            if pixels is not None and not same_frames(x, out):
                pixels = None
            x = out
        return x

    def prefill(self, llm: nn.Module, sink: Tensor, sink_mask: Tensor,
                visual: Iterable[tuple[Tensor, Tensor]]) -> Context:
        if self.kind != "cache":
            raise TypeError("compressor=chain: prefill is only for a chain whose last stage is a cache compressor")
        return self.stages[-1].prefill(llm, sink, sink_mask, visual)
