"""`compressor=pool`: spatial pooling of each frame's patch grid (LLaVA-NeXT-Video, Video-XL's 2×2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vlc.compressors.base import Compressor, check_settings, is_int, show
from vlc.compressors.ops import grid_pool
from vlc.tokens import FrameTokens


class SpatialPool(Compressor):
    """Average (or bilinear) pooling by ``stride`` on the patch grid: N → N / stride².

    A grid side that ``stride`` does not divide is pooled with ceil_mode, so edge cells average
    fewer patches rather than being dropped.
    """
    placements = ("encoder", "projected")  # width-agnostic: before or after the projector

    needs_grid = True

    def __init__(self, stride: int = 2, mode: str = "avg") -> None:
        super().__init__()
        problems = []
        if not is_int(stride, 1):
            problems.append(f"compressor.stride={show(stride)} (pool): pooling factor per grid side, an integer >= 1 "
                            f"(1 = no pooling, 2 = LLaVA-NeXT-Video's 2x2)")
        if mode not in ("avg", "bilinear"):
            problems.append(f"compressor.mode={show(mode)} (pool): choose avg or bilinear")
        check_settings(problems)
        self.stride, self.mode = stride, mode

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        if x.grid is None:
            raise ValueError("pool needs tokens on a patch grid (FrameTokens.grid is None); put it before a Q-Former")
        if self.stride == 1:
            return x
        B, T, N, D = x.tokens.shape
        if self.mode == "avg":
            tokens, mask, grid = grid_pool(x.tokens.reshape(B * T, N, D), x.token_mask.reshape(B * T, N), x.grid,
                                           self.stride)
            return FrameTokens(tokens.reshape(B, T, -1, D), mask.reshape(B, T, -1), x.times, grid)
        h, w = x.grid
        cells = x.tokens.reshape(B * T, h, w, D).permute(0, 3, 1, 2)  # (B*T, D, h, w)
        size = (-(-h // self.stride), -(-w // self.stride))
        pooled = F.interpolate(cells, size=size, mode="bilinear", align_corners=False)
        tokens = pooled.flatten(2).transpose(1, 2).reshape(B, T, size[0] * size[1], D)
        # A pooled cell is real when any patch under it was (pruned patches do not resurrect whole cells).
        mask = F.max_pool2d(x.token_mask.reshape(B * T, 1, h, w).float(), self.stride, ceil_mode=True)
        return FrameTokens(tokens, mask.reshape(B, T, -1) > 0, x.times, size)
