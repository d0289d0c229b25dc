"""`compressor=stc|stc_v35|stp`: VideoLLaMA2's spatial-temporal convolution connector.

Per frame a RegNet stage mixes neighbouring patches, a 3-D convolution with kernel = stride =
(2, 2, 2) halves time, height and width, a second RegNet stage mixes again, and an MLP reads the
result out:

    (B, T, h·w, D) ─RegStage(4)─▶ (B, C, T, h, w) ─Conv3d k=s=2 + SiLU─▶ (B, C, T', h', w')
                   ─RegStage(4)─▶ ─MLP─▶ (B, T', h'·w', D)

``padding: 1`` is VideoLLaMA2's ``stc_connector`` (one zero frame/row/column on every side, so
8 frames of 24×24 become 5 × 13×13 = 845 tokens), ``padding: 0`` its ``stc_connector_v35``
(4 × 12×12 = 576), and ``downsample: pool`` its ``stp_connector`` (AvgPool3d instead of the conv:
parameter-free downsampling, still followed by SiLU as there).

Frames the convolution mixes come in pairs, so two rules keep batching honest:
- an odd number of real frames is made even by repeating the last real frame (per sample, so a
  padded batch computes what each sample would alone);
- padded frames (``frame_mask`` False) are zeroed before the convolution, exactly like the
  convolution's own zero padding, so they never leak into a real output frame. Pruned tokens of a
  real frame (``token_mask`` False) are zeroed at the input: an absent patch reads as zero.
Padded frames must trail the real ones (as the data collator and the other compressors produce).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.regnet import RegStage
from torch import Tensor, nn

from vlc.compressors.base import Compressor, check_settings, is_int, show
from vlc.tokens import FrameTokens


def reg_stage(depth: int, in_chs: int, out_chs: int) -> nn.Module:
    """A RegNet stage as VideoLLaMA2 builds it: stride 1, SiLU, LayerNorm2d.

    timm's Bottleneck defaults then give each block 1×1 conv → depthwise 3×3 conv (group_size 1)
    → squeeze-excitation (ratio 0.25) → 1×1 conv, with a residual connection.
    """
    if depth == 0:
        return nn.Identity() if in_chs == out_chs else nn.Conv2d(in_chs, out_chs, 1)
    return RegStage(
        depth=depth, in_chs=in_chs, out_chs=out_chs, stride=1, dilation=1,
        act_layer=nn.SiLU, norm_layer=LayerNorm2d,
    )


class STCConnector(Compressor):
    """RegStage → Conv3d (or AvgPool3d) + SiLU → RegStage → MLP, on a (B, C, T, h, w) volume.

    dim:        width of the incoming features (encoder width).
    hidden:     width of the stages and the downsampler; None = dim. (VideoLLaMA2 runs them at the
                LLM width because its connector is also the projector; here the shared projector
                follows, so the encoder width is the default.)
    out_dim:    width of the readout; None = dim, as the compressor contract asks.
    depth:      RegNet blocks per stage (VideoLLaMA2: 4).
    kernel:     (t, h, w) kernel = stride of the downsampler (VideoLLaMA2: (2, 2, 2)).
    padding:    zero padding of the downsampler on every side: 1 = stc_connector, 0 = v35.
    downsample: "conv" (STC, learned Conv3d) or "pool" (STP, AvgPool3d, no parameters).
    mlp_depth:  Linear layers of the readout, GELU between (VideoLLaMA2: 2).
    zero_init_last: zero the last norm's weight in every RegNet block, as timm's RegNet models
                initialise them (VideoLLaMA2 builds bare RegStages, which skip it).
    """

    needs_grid = True
    keeps_frames = False

    def __init__(
        self,
        dim: int,
        hidden: int | None = None,
        out_dim: int | None = None,
        depth: int = 4,
        kernel: Sequence[int] = (2, 2, 2),
        padding: int = 1,
        downsample: str = "conv",
        mlp_depth: int = 2,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        hidden = hidden or dim
        out_dim = out_dim or dim
        label = "stc" if downsample == "conv" else "stp"
        kernel = list(kernel or [])
        if len(kernel) != 3 or not all(is_int(k, 1) for k in kernel):
            raise ValueError(f"compressor.kernel={kernel} ({label}): three positive integers (t, h, w), "
                             f"VideoLLaMA2: [2, 2, 2]")
        kernel = tuple(kernel)
        problems = []
        if downsample not in ("conv", "pool"):
            problems.append(f"compressor.downsample={show(downsample)} (stc): choose conv (stc) or pool (stp)")
        if not is_int(padding, 0) or (downsample == "pool" and 2 * padding > min(kernel)):
            problems.append(f"compressor.padding={show(padding)} ({label}): an integer >= 0, at most half the kernel "
                            f"with downsample=pool")
        for key, value, low in (("mlp_depth", mlp_depth, 1), ("depth", depth, 0)):
            if not is_int(value, low):
                problems.append(f"compressor.{key}={show(value)} ({label}): an integer >= {low}")
        check_settings(problems)
        self.kernel, self.padding = kernel, padding

        self.s1 = reg_stage(depth, dim, hidden)
        if downsample == "conv":
            down = nn.Conv3d(hidden, hidden, kernel_size=kernel, stride=kernel, padding=padding, bias=True)
        else:
            down = nn.AvgPool3d(kernel, stride=kernel, padding=padding)
        # SiLU after the downsampler in both variants, as VideoLLaMA2 has it.
        self.sampler = nn.Sequential(down, nn.SiLU())
        self.s2 = reg_stage(depth, hidden, hidden)
        if zero_init_last:  # timm's RegNet init: each block starts as its shortcut (then SiLU)
            for module in self.modules():
                if hasattr(module, "zero_init_last"):
                    module.zero_init_last()
        layers: list[nn.Module] = [nn.Linear(hidden, out_dim)]
        for _ in range(1, mlp_depth):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.readout = nn.Sequential(*layers)

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        if x.grid is None:
            raise ValueError("stc needs tokens on a patch grid (FrameTokens.grid is None); put it before a Q-Former")
        B, T, N, D = x.tokens.shape
        h, w = x.grid
        kt = self.kernel[0]
        src, keep = self.frame_plan(x.frame_mask)  # (B, T2) long, (B, T2) bool
        T2 = src.shape[1]
        bidx = torch.arange(B, device=src.device)[:, None]

        tokens = x.tokens * x.token_mask[..., None].to(x.tokens.dtype)  # absent patches read as zero
        tokens = tokens[bidx, src]  # (B, T2, N, D): odd real counts end on a repeated frame
        feats = tokens.reshape(B * T2, h, w, D).permute(0, 3, 1, 2)  # (B·T2, D, h, w)
        feats = self.s1(feats)  # (B·T2, C, h, w)
        C = feats.shape[1]
        feats = feats.reshape(B, T2, C, h, w).transpose(1, 2)  # (B, C, T2, h, w)
        # Padded frames become the same zeros as the convolution's own padding.
        feats = feats * keep[:, None, :, None, None].to(feats.dtype)
        feats = self.sampler(feats)  # (B, C, T', h', w')
        _, _, T3, h3, w3 = feats.shape
        feats = feats.transpose(1, 2).reshape(B * T3, C, h3, w3)  # (B·T', C, h', w')
        feats = self.s2(feats)
        feats = feats.reshape(B, T3, C, h3 * w3).transpose(2, 3)  # (B, T', h'·w', C)
        out = self.readout(feats)  # (B, T', h'·w', out_dim)

        # Which input frames each output frame covers follows the same kernel/stride/padding in time.
        # (Summed by hand, not by conv1d, so autocast cannot round times to bf16.)
        times = x.times[bidx, src]  # (B, T2)

        def cover(v: Tensor) -> Tensor:  # (B, T2) → (B, T'): sum over the slots under each output frame
            return F.pad(v, (self.padding, self.padding)).unfold(1, kt, kt).sum(-1)

        weight = keep.to(times.dtype)
        real_count = cover(weight)  # (B, T'): real input frames under each output frame
        real = real_count > 0
        # Mean time of the real frames covered; an all-padding output keeps the mean of its slots.
        mean_real = cover(times * weight) / real_count.clamp(min=1)
        mean_any = cover(times) / cover(torch.ones_like(times)).clamp(min=1)
        out_times = torch.where(real, mean_real, mean_any)  # (B, T')
        token_mask = real[:, :, None].expand(B, T3, h3 * w3)
        return FrameTokens(out, token_mask.contiguous(), out_times, (h3, w3))

    def frame_plan(self, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Which input frame feeds each slot of the time axis, and which slots are real.

        frame_mask: (B, T) bool, True on real frames, padding trailing.
        Returns src (B, T2) long and keep (B, T2) bool, T2 = T rounded up to a multiple of the time
        kernel. A sample with n real frames keeps slots < n rounded up to the kernel, the extra
        slots repeating its last real frame (VideoLLaMA2 assumes an even frame count; repeating
        beats dropping the last frame or pairing it with a zero frame). Later slots are padding.
        """
        B, T = frame_mask.shape
        kt = self.kernel[0]
        n = frame_mask.sum(1)  # (B,)
        t = torch.arange(T, device=frame_mask.device)
        if not torch.equal(frame_mask, t[None] < n[:, None]):
            raise ValueError("stc: padded frames (frame_mask False) must trail the real frames of each sample")
        T2 = -(-T // kt) * kt
        t2 = torch.arange(T2, device=frame_mask.device)
        src = torch.minimum(t2[None], (n[:, None] - 1).clamp(min=0))  # (B, T2)
        keep = t2[None] < (-(-n // kt) * kt)[:, None]  # (B, T2)
        return src, keep


class STCProjector(STCConnector):
    """VideoLLaMA2's own placement (``compressor=stc_projector``): the STC connector *is* the
    projector. It reads the encoder's features and writes the LLM's width (``out_dim``, which the
    model passes), with its stages at the LLM width as VideoLLaMA2 runs them; the backbone's own
    projector is not used."""

    sits = "projector"

    def __init__(
        self,
        dim: int,
        out_dim: int,
        hidden: int | None = None,
        depth: int = 4,
        kernel: Sequence[int] = (2, 2, 2),
        padding: int = 1,
        downsample: str = "conv",
        mlp_depth: int = 2,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__(dim, hidden=hidden or out_dim, out_dim=out_dim, depth=depth, kernel=kernel, padding=padding,
                         downsample=downsample, mlp_depth=mlp_depth, zero_init_last=zero_init_last)
