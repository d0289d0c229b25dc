"""`compressor=none`: every patch token of every frame enters the LLM (the uncompressed baseline)."""

from __future__ import annotations

from torch import Tensor

from vlc.compressors.base import Compressor
from vlc.tokens import FrameTokens


class Identity(Compressor):
    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        return x
