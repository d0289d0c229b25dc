"""Differential frame pruning: static video, a moving square, region size on a pooled grid,
VideoLLaMA3's threshold units, batches with padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vlc.compressors import build_compressor
from vlc.compressors.diffp import DifferentialFramePruning
from vlc.tokens import FrameTokens

CONFIGS = Path(__file__).parents[1] / "configs" / "compressor"
D = 8
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalise(frames01: torch.Tensor, std=(0.5, 0.5, 0.5), mean=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """(B, T, 3, H, W) in [0, 1] → normalised as an encoder would."""
    return (frames01 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def tokens_for(pixels: torch.Tensor, grid: tuple[int, int], real: list[int] | None = None) -> FrameTokens:
    B, T = pixels.shape[:2]
    n = grid[0] * grid[1]
    real = real or [T] * B
    frame_mask = torch.arange(T)[None] < torch.tensor(real)[:, None]
    mask = frame_mask[..., None].expand(B, T, n).contiguous()
    times = torch.arange(T, dtype=torch.float32)[None].expand(B, T).contiguous()
    return FrameTokens(torch.randn(B, T, n, D), mask, times, grid)


def moving_square(T: int, row: int, size: int = 64, side: int = 16, step: int = 16) -> torch.Tensor:
    """(T, 3, size, size) in [0, 1]: a white side×side square on grey, moving right by step each frame."""
    frames = torch.full((T, 3, size, size), 0.2)
    for t in range(T):
        frames[t, :, row * side : (row + 1) * side, t * step : t * step + side] = 1.0
    return frames


def kept(out: FrameTokens, b: int = 0) -> list[list[int]]:
    return [out.token_mask[b, t].nonzero().flatten().tolist() for t in range(out.token_mask.shape[1])]


def test_config_defaults_are_videollama3s():
    m = build_compressor(OmegaConf.load(CONFIGS / "diffp.yaml"), D)
    assert isinstance(m, DifferentialFramePruning)
    assert (m.threshold, m.min_tokens) == (0.1, 1)
    assert list(m.parameters()) == []


@pytest.mark.parametrize("fallback, expected_token", [("most_changed", None), ("first", 0)])
def test_static_video_keeps_first_frame_and_one_token_per_frame(fallback, expected_token):
    frame = torch.rand(1, 1, 3, 64, 64)
    pixels = normalise(frame.expand(1, 5, 3, 64, 64))
    out = DifferentialFramePruning(fallback=fallback)(tokens_for(pixels, (4, 4)), pixels)
    assert out.token_mask.sum(-1).tolist() == [[16, 1, 1, 1, 1]]
    assert out.num_tokens().tolist() == [20]
    if expected_token is not None:  # VideoLLaMA3's choice: the first token in raster order
        assert all(k == [expected_token] for k in kept(out)[1:])


def test_moving_square_keeps_exactly_the_patches_it_crossed():
    # 4×4 grid of 16-px patches; the square sits in row 1 at column t in frame t.
    # Frame t differs from t−1 in the patch it left (1, t−1) and the one it entered (1, t).
    pixels = normalise(moving_square(4, row=1)[None])
    out = DifferentialFramePruning()(tokens_for(pixels, (4, 4)), pixels)
    assert kept(out) == [list(range(16)), [4, 5], [5, 6], [6, 7]]


def test_region_follows_a_pooled_grid():
    # 2×2 tokens on 64×64 pixels → 32-px regions. A 16-px square moves 0 → 16 → 32 px along row 0:
    # the first step stays inside region 0, the second crosses into region 1.
    pixels = normalise(moving_square(3, row=0)[None])
    out = DifferentialFramePruning()(tokens_for(pixels, (2, 2)), pixels)
    assert kept(out) == [[0, 1, 2, 3], [0], [0, 1]]
    with pytest.raises(ValueError, match="does not tile"):
        DifferentialFramePruning()(tokens_for(pixels, (3, 3)), pixels)


@pytest.mark.parametrize("std", [(0.5, 0.5, 0.5), CLIP_STD])
def test_threshold_is_in_videollama3_units(std):
    # VideoLLaMA3: mean |Δ| of [-1, 1] pixels × 255 > 0.1. A 16×16×3 region has 768 values; k values
    # changing by one uint8 level give 2k/768: k = 39 → 0.1016 (kept), k = 38 → 0.0990 (pruned).
    # The result must not depend on the std the encoder normalised with.
    def first(k: int) -> torch.Tensor:  # (16, 16) bool: the first k pixels of a region in raster order
        return (torch.arange(256) < k).view(16, 16)

    frames = torch.full((1, 2, 3, 64, 64), 100 / 255)
    frames[0, 1, 0, 0:16, 0:16][first(39)] += 1 / 255  # region 0: 39 red values → kept
    frames[0, 1, 0, 0:16, 16:32][first(38)] += 1 / 255  # region 1: 38 red values → pruned
    frames[0, 1, 1, 16:32, 32:48][first(38)] += 1 / 255  # region 6: 38 green values → pruned
    pixels = normalise(frames, std=std, mean=(0.48145466, 0.4578275, 0.40821073))
    out = DifferentialFramePruning(pixel_std=std)(tokens_for(pixels, (4, 4)), pixels)
    assert kept(out)[1] == [0]


def test_batch_with_different_motion_and_padding():
    # Sample 0: square along row 1 for 4 frames. Sample 1: along row 2 for 3 frames, then padding.
    pixels = torch.stack([moving_square(4, row=1), moving_square(4, row=2)])
    pixels[1, 3] = torch.rand(3, 64, 64)  # a padded frame's pixels are garbage
    pixels = normalise(pixels)
    x = tokens_for(pixels, (4, 4), real=[4, 3])
    out = DifferentialFramePruning()(x, pixels)
    assert kept(out, 0) == [list(range(16)), [4, 5], [5, 6], [6, 7]]
    assert kept(out, 1) == [list(range(16)), [8, 9], [9, 10], []]
    assert torch.equal(out.tokens, x.tokens) and out.grid == (4, 4)  # masks, not zeros


def test_padding_in_the_middle_compares_with_the_last_real_frame():
    pixels = normalise(moving_square(4, row=1)[None])
    x = tokens_for(pixels, (4, 4))
    x.token_mask[0, 1] = False  # frame 1 is padding: frame 2 is compared with frame 0
    out = DifferentialFramePruning()(x, pixels)
    assert kept(out) == [list(range(16)), [], [4, 6], [6, 7]]


def test_pixels_are_required():
    pixels = normalise(moving_square(2, row=0)[None])
    with pytest.raises(ValueError, match="needs the frames' pixels"):
        DifferentialFramePruning()(tokens_for(pixels, (4, 4)), None)
