"""`compressor=budget`: TimeMarker's AnyLength token budget (Chen et al., 2024).

TimeMarker feeds videos of any length into a fixed LLM context by trading tokens per frame for
frames: a short video keeps fine frames, a long one is pooled harder. Here, per video, with T its
real frame count and (h, w) the patch grid, the pooling factor is the smallest s in
1, 2, …, ``max_stride`` with

    T · ceil(h / s) · ceil(w / s) ≤ max_tokens

(s × s average pooling, edge cells averaging the patches they have, as ``compressor=pool`` does).
If even ``max_stride`` does not fit, the video also loses frames: it keeps
n = max_tokens // (tokens per frame at max_stride) frames, spread uniformly (segment midpoints,
as vlc's frame sampler picks them), which is TimeMarker's other lever, a lower frame rate for long
videos. The count uses the whole grid cell, so pruned tokens (after diffp) only make it safer;
time markers (``prompt.time_markers``, TimeMarker's separators) are text and not counted.

Different videos of a batch may get different factors: tokens per frame are padded to the
largest N' of the batch (padding masked), frames to the largest T'. ``grid`` is the common
pooled grid when every sample has the same, else None. The chosen factors are kept in
``last_strides`` (one int per sample of the last batch) and reported as ``pool_stride``.

TimeMarker publishes no code; the rule above is its paper's idea (adapt the frame rate and the
per-frame compression to the video's length), the budget a user setting. Parameter-free.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlc.compressors.base import Compressor, check_settings, is_int, show
from vlc.compressors.ops import grid_pool
from vlc.tokens import FrameTokens


class TokenBudget(Compressor):
    """Pool each video's frames just enough to fit ``max_tokens`` visual tokens.

    max_tokens: visual tokens per video the LLM may receive.
    max_stride: the largest pooling factor; None = pool down to one token per frame.
    """
    placements = ("encoder", "projected")  # width-agnostic: before or after the projector

    needs_grid = True
    keeps_grid = False  # videos of a batch may get different pooled grids
    keeps_frames = False  # a video over budget at max_stride loses frames

    def __init__(self, max_tokens: int = 6144, max_stride: int | None = None) -> None:
        super().__init__()
        problems = []
        if not is_int(max_tokens, 1):
            problems.append(f"compressor.max_tokens={show(max_tokens)} (budget): visual tokens per video, "
                            f"an integer >= 1")
        if max_stride is not None and not is_int(max_stride, 1):
            problems.append(f"compressor.max_stride={show(max_stride)} (budget): an integer >= 1 or null")
        check_settings(problems)
        self.max_tokens, self.max_stride = max_tokens, max_stride
        self.last_strides: list[int] = []

    def plan(self, frames: int, grid: tuple[int, int]) -> tuple[int, int]:
        """(pooling factor, frames kept) for a video of ``frames`` real frames on ``grid``."""
        h, w = grid
        largest = min(self.max_stride or max(h, w), max(h, w))  # past max(h, w) nothing changes
        for s in range(1, largest + 1):
            if frames * math.ceil(h / s) * math.ceil(w / s) <= self.max_tokens:
                return s, frames
        per_frame = math.ceil(h / largest) * math.ceil(w / largest)
        keep = self.max_tokens // per_frame
        if keep < 1:
            raise ValueError(
                f"compressor.max_tokens={self.max_tokens} is below one frame at max_stride={largest} "
                f"({per_frame} tokens on the {h}x{w} grid); raise max_tokens or max_stride"
            )
        return largest, keep

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        if x.grid is None:
            raise ValueError("budget needs tokens on a patch grid (FrameTokens.grid is None); put it before a Q-Former")
        B, T, N, D = x.tokens.shape
        h, w = x.grid
        real = x.frame_mask  # (B, T)
        outs = []  # per sample: tokens (T_b, N_b, D), mask (T_b, N_b), times (T_b,), grid
        self.last_strides = []
        for b in range(B):
            frames = real[b].nonzero().squeeze(1)  # (T_real,) indices of real frames
            s, keep = self.plan(len(frames), (h, w))
            if keep < len(frames):
                # Segment midpoints: frame i·T/keep + T/(2·keep), the same spread the sampler uses.
                pick = ((torch.arange(keep, device=frames.device) + 0.5) * len(frames) / keep).long()
                frames = frames[pick]
            self.last_strides.append(s)
            outs.append((*grid_pool(x.tokens[b, frames], x.token_mask[b, frames], (h, w), s), x.times[b, frames]))

        filled = [o for o in outs if o[0].shape[0] > 0] or outs  # a sample without frames sets no N'
        T2 = max(1, max(o[0].shape[0] for o in outs))
        N2 = max(o[0].shape[1] for o in filled)
        tokens = x.tokens.new_zeros(B, T2, N2, D)
        token_mask = torch.zeros(B, T2, N2, dtype=torch.bool, device=x.tokens.device)
        times = x.times.new_zeros(B, T2)
        for b, (tok, msk, grid, tim) in enumerate(outs):
            t, n = tok.shape[:2]
            if t == 0:
                continue
            tokens[b, :t, :n], token_mask[b, :t, :n], times[b, :t] = tok, msk, tim
            times[b, t:] = tim[-1]  # padded frames keep the last time (masked anyway)
        grids = {o[2] for o in filled}
        return FrameTokens(tokens, token_mask, times, grids.pop() if len(grids) == 1 else None)

    def report(self) -> dict[str, list[float]]:
        return {"pool_stride": [float(s) for s in self.last_strides]}
