"""`compressor=none`: every patch token of every frame enters the LLM (the uncompressed baseline)."""

from __future__ import annotations

from torch import Tensor, nn

from vlc.tokens import FrameTokens


class Identity(nn.Module):
    def forward(self, x: FrameTokens, pixels: Tensor | None = None) -> FrameTokens:
        return x
