"""`compressor=diffp`: VideoLLaMA3's differential frame pruning (Zhang et al., 2025).

A token is kept only where its patch region changed since the previous frame: the mean absolute
pixel difference over the region (all 3 channels) must be above ``threshold``. The first frame
is kept whole and every frame keeps at least ``min_tokens`` tokens. Nothing is learned; pruned
tokens are marked False in ``token_mask``.

Units, as VideoLLaMA3 measures them: it differences the pixels its vision encoder sees, which
are normalised with mean = std = 0.5 (i.e. in [-1, 1]), and multiplies by 255; its threshold is
0.1 in those units. vlc's pixels are normalised with the encoder's own std, so they are scaled
back by ``pixel_std`` to [0, 1] and re-expressed on VideoLLaMA3's scale (÷ 0.5, × 255). The same
``threshold`` therefore prunes the same patches whatever the encoder. In uint8 levels, 0.1 is a
mean change of 0.05 per value: only regions that are exactly (or almost exactly) static go.

Region size follows the token grid: region = (H / grid_h, W / grid_w) pixels, so a pooled grid
(or VideoLLaMA3's 2×2 merge) gets the larger region its tokens cover.

Where no token of a frame passes, VideoLLaMA3 keeps the frame's first token(s) in raster order;
vlc keeps the most-changed one(s) by default (``fallback: first`` restores VideoLLaMA3's choice).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vlc.compressors.base import Compressor, check_settings, is_int, is_number, show
from vlc.tokens import FrameTokens

# VideoLLaMA3 differences pixels normalised with std 0.5 and multiplies by 255.
VIDEOLLAMA3_STD = 0.5
VIDEOLLAMA3_SCALE = 255.0


class DifferentialFramePruning(Compressor):
    """Keep tokens whose patch region changed since the previous frame.

    threshold:  mean |Δ| over a region, in VideoLLaMA3's units (its default: 0.1).
    min_tokens: tokens every frame keeps at least (VideoLLaMA3: 1).
    fallback:   which tokens fill up a frame below ``min_tokens``: "most_changed" or "first".
    pixel_std:  the per-channel std the encoder normalised the pixels with (the tiny ViT's
                [0.5, 0.5, 0.5]; CLIP's [0.26862954, 0.26130258, 0.27577711]).
    """
    placements = ("encoder", "projected")  # width-agnostic: before or after the projector

    reads_pixels = True
    needs_grid = True

    def __init__(
        self,
        threshold: float = 0.1,
        min_tokens: int = 1,
        fallback: str = "most_changed",
        pixel_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        # The model passes its encoder's std; standalone use assumes the (0.5, 0.5, 0.5) of timm ViTs.
        pixel_std = (0.5, 0.5, 0.5) if pixel_std is None else pixel_std
        problems = []
        if not is_int(min_tokens, 1):
            problems.append(f"compressor.min_tokens={show(min_tokens)} (diffp): tokens every frame keeps, "
                            f"an integer >= 1")
        if fallback not in ("most_changed", "first"):
            problems.append(f"compressor.fallback={show(fallback)} (diffp): choose most_changed or first")
        if len(pixel_std) != 3:
            problems.append(f"compressor.pixel_std={show(list(pixel_std))} (diffp): one value per RGB channel, "
                            f"or null for the encoder's")
        if not is_number(threshold):
            problems.append(f"compressor.threshold={show(threshold)} (diffp): a mean absolute pixel change "
                            f"(VideoLLaMA3: 0.1)")
        check_settings(problems)
        self.threshold, self.min_tokens, self.fallback = threshold, min_tokens, fallback
        # Normalised difference × scale = difference in VideoLLaMA3's units.
        scale = torch.tensor([float(s) for s in pixel_std]) / VIDEOLLAMA3_STD * VIDEOLLAMA3_SCALE
        self.register_buffer("scale", scale.view(3, 1, 1), persistent=False)

    def region_change(self, x: FrameTokens, pixels: Tensor) -> Tensor:
        """(B, T, N) mean |Δ| of each token's region vs the previous real frame; +inf on first frames."""
        B, T, N, _ = x.tokens.shape
        if x.grid is None:
            raise ValueError("diffp needs tokens on a patch grid (FrameTokens.grid is None); put it before a Q-Former")
        if pixels.shape[:3] != (B, T, 3):
            raise ValueError(f"diffp: pixels shape {tuple(pixels.shape)} is not (B, T, 3, H, W) with B={B}, T={T}")
        gh, gw = x.grid
        H, W = pixels.shape[-2:]
        if H % gh or W % gw:
            raise ValueError(f"diffp: the {gh}x{gw} token grid does not tile {H}x{W} pixels into equal regions")
        rh, rw = H // gh, W // gw

        # The previous *real* frame of each frame: padded frames in between are skipped.
        valid = x.frame_mask  # (B, T)
        idx = torch.arange(T, device=valid.device).expand(B, T)
        last_real = torch.where(valid, idx, -1).cummax(dim=1).values  # (B, T) last real frame ≤ t
        prev = torch.cat([last_real.new_full((B, 1), -1), last_real[:, :-1]], dim=1)  # (B, T) last real < t
        prev_pixels = pixels[torch.arange(B, device=prev.device)[:, None], prev.clamp(min=0)]  # (B, T, 3, H, W)

        diff = (pixels - prev_pixels).abs() * self.scale.to(pixels.dtype)  # (B, T, 3, H, W)
        change = diff.reshape(B, T, 3, gh, rh, gw, rw).mean(dim=(2, 4, 6))  # (B, T, gh, gw)
        change = change.reshape(B, T, N).float()
        return change.masked_fill((prev < 0)[:, :, None], float("inf"))  # first frame: keep whole

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        if pixels is None:
            raise ValueError(
                "diffp needs the frames' pixels: call it with pixels (B, T, 3, H, W), and in a chain put it "
                "before any stage that merges or drops frames"
            )
        change = self.region_change(x, pixels)  # (B, T, N)
        keep = (change > self.threshold) & x.token_mask

        # Every real frame keeps at least min_tokens of the tokens it came with.
        short = x.frame_mask & (keep.sum(-1) < self.min_tokens)  # (B, T)
        if short.any():
            if self.fallback == "most_changed":
                score = change
            else:  # VideoLLaMA3: the first tokens in raster order
                score = -torch.arange(change.shape[-1], device=change.device, dtype=change.dtype).expand_as(change)
            score = score.masked_fill(~x.token_mask, float("-inf"))
            k = min(self.min_tokens, change.shape[-1])
            top = score.topk(k, dim=-1).indices  # (B, T, k)
            extra = torch.zeros_like(keep).scatter_(-1, top, True) & x.token_mask
            keep = torch.where(short[:, :, None], keep | extra, keep)
        return x.replace(token_mask=keep)
