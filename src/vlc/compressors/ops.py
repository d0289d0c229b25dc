"""Tensor operations several compressors share: a masked mean and average pooling on the patch grid."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only entries where ``mask`` (x's shape without its last
    dimension) is true; an all-false row gives 0. x (..., N, D), mask (..., N) → (..., D) for dim=-2."""
    weight = mask.to(x.dtype)[..., None]
    return (x * weight).sum(dim) / weight.sum(dim).clamp(min=1)


def grid_pool(tokens: Tensor, mask: Tensor, grid: tuple[int, int], stride: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """stride × stride average pooling of frames on their patch grid: tokens (F, N, D), mask (F, N) →
    (F, N', D), (F, N'), grid'. Edge cells average only the patches they cover (ceil mode), a kernel
    wider than the grid is one cell on that side, and a pooled cell is real when any patch under it
    was (pruned patches do not resurrect whole cells)."""
    Fr, N, D = tokens.shape
    h, w = grid
    if stride == 1:
        return tokens, mask, grid
    kernel = (min(stride, h), min(stride, w))
    cells = tokens.reshape(Fr, h, w, D).permute(0, 3, 1, 2)  # (F, D, h, w)
    pooled = F.avg_pool2d(cells, kernel, ceil_mode=True)  # (F, D, h', w')
    h2, w2 = pooled.shape[-2:]
    real = F.max_pool2d(mask.reshape(Fr, 1, h, w).float(), kernel, ceil_mode=True) > 0  # (F, 1, h', w')
    return pooled.flatten(2).transpose(1, 2), real.reshape(Fr, h2 * w2), (h2, w2)
