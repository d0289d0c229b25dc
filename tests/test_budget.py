"""TimeMarker AnyLength budget: never over budget, the smallest pooling that fits, frame dropping
past max_stride, per-sample factors in one batch, and the model end to end."""

from __future__ import annotations

import math

import pytest
import torch

from vlc.compressors.budget import TokenBudget
from vlc.compressors.pool import SpatialPool
from vlc.run import build_model
from vlc.tokens import FrameTokens

from conftest import fake_batch

D = 2


def video(T: int, grid: tuple[int, int], real: list[int] | None = None, B: int = 1) -> FrameTokens:
    h, w = grid
    tokens = torch.randn(B, T, h * w, D, generator=torch.Generator().manual_seed(T * 100 + h * 10 + w))
    real = real or [T] * B
    frame_mask = torch.arange(T)[None] < torch.tensor(real)[:, None]  # (B, T)
    times = (torch.arange(T, dtype=torch.float32) * 0.5)[None].expand(B, T).contiguous()
    return FrameTokens(tokens, frame_mask[..., None].expand(B, T, h * w).contiguous(), times, grid)


def tokens_at(T: int, grid: tuple[int, int], s: int) -> int:
    return T * math.ceil(grid[0] / s) * math.ceil(grid[1] / s)


@pytest.mark.parametrize("grid", [(4, 4), (5, 7), (24, 24), (1, 9)])
@pytest.mark.parametrize("T", [1, 3, 8, 50, 200])
@pytest.mark.parametrize("max_tokens", [1, 10, 64, 500])
def test_never_over_budget_and_the_smallest_pooling_that_fits(grid, T, max_tokens):
    budget = TokenBudget(max_tokens=max_tokens)
    out = budget(video(T, grid))
    (s,) = budget.last_strides
    assert int(out.num_tokens()) <= max_tokens
    largest = max(grid)
    if tokens_at(T, grid, largest) <= max_tokens:  # pooling alone fits: every frame stays
        assert out.tokens.shape[1] == T and int(out.num_tokens()) == tokens_at(T, grid, s)
        assert s == 1 or tokens_at(T, grid, s - 1) > max_tokens  # one step finer would not fit
        assert out.grid == (math.ceil(grid[0] / s), math.ceil(grid[1] / s))
    else:  # one token per frame, as many frames as the budget holds
        assert s == largest and out.tokens.shape[1] == max_tokens and int(out.num_tokens()) == max_tokens


def test_pins_one_case_of_each_kind():
    budget = TokenBudget(max_tokens=100)
    out = budget(video(8, (6, 6)))  # s=1: 288, s=2: 72 ≤ 100
    assert budget.last_strides == [2] and out.tokens.shape == (1, 8, 9, D) and out.grid == (3, 3)
    torch.testing.assert_close(out.tokens, SpatialPool(2)(video(8, (6, 6))).tokens)  # the same pooling as pool
    out = budget(video(12, (6, 6)))  # s=2: 108, s=3: 48
    assert budget.last_strides == [3] and int(out.num_tokens()) == 48
    out = budget(video(4, (6, 6)))  # s=1: 144, s=2: 36
    assert budget.last_strides == [2]
    out = budget(video(3, (5, 5)))  # s=1: 75 fits, nothing is pooled
    assert budget.last_strides == [1] and out.tokens.shape == (1, 3, 25, D) and out.grid == (5, 5)


def test_past_max_stride_frames_are_dropped_uniformly():
    budget = TokenBudget(max_tokens=12, max_stride=2)
    out = budget(video(10, (4, 4)))  # s=2: 4 tokens/frame × 10 = 40 > 12 → keep 12 // 4 = 3 frames
    assert budget.last_strides == [2] and out.tokens.shape == (1, 3, 4, D)
    # Segment midpoints of 10 frames in 3 segments: frames 1, 5, 8 (at 0.5 s each).
    assert out.times.tolist() == [[0.5, 2.5, 4.0]]
    with pytest.raises(ValueError, match="max_tokens=3"):
        TokenBudget(max_tokens=3, max_stride=2)(video(1, (4, 4)))


def test_each_sample_gets_its_own_factor_and_equals_its_own_run():
    budget = TokenBudget(max_tokens=64)
    x = video(8, (4, 4), real=[8, 2], B=2)  # 8 frames: s=2 (8·4 = 32); 2 frames: s=1 (2·16 = 32)
    out = budget(x)
    assert budget.last_strides == [2, 1]
    assert out.tokens.shape == (2, 8, 16, D) and out.grid is None  # N' padded to the larger 16
    assert out.num_tokens().tolist() == [32, 32]
    for b, T in ((0, 8), (1, 2)):
        alone = FrameTokens(x.tokens[b : b + 1, :T], x.token_mask[b : b + 1, :T], x.times[b : b + 1, :T], x.grid)
        want = TokenBudget(max_tokens=64)(alone)
        n = want.tokens.shape[2]
        torch.testing.assert_close(out.tokens[b, :T, :n], want.tokens[0])
        assert out.token_mask[b, :T, :n].all()
        assert not out.token_mask[b, :, n:].any() and not out.token_mask[b, T:].any()
    same = TokenBudget(max_tokens=64)(video(8, (4, 4), B=2))
    assert same.grid == (2, 2)  # one factor for the whole batch: the grid is kept


def test_gradients_flow_and_errors():
    x = video(8, (4, 4))
    tokens = x.tokens.clone().requires_grad_(True)
    TokenBudget(max_tokens=32)(x.replace(tokens=tokens)).tokens.sum().backward()
    torch.testing.assert_close(tokens.grad, torch.full_like(tokens, 0.25))  # each patch is 1/4 of a 2×2 cell
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBudget(max_tokens=0)
    with pytest.raises(ValueError, match="grid"):
        TokenBudget()(x.replace(grid=None))


def test_model_end_to_end(cfg_factory):
    torch.manual_seed(0)
    m = build_model(cfg_factory(["~data", "compressor=budget", "compressor.max_tokens=40"]))
    b = fake_batch(B=2, T=6)
    b["frame_mask"][1, 2:] = False  # 2 real frames: 2 · 16 = 32 fits without pooling
    loss = m(b)
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        records = m.eval().pipeline.evaluate(b)
    assert m.compressor.last_strides == [2, 1]  # 6 · 16 = 96 > 40, 6 · 4 = 24 ≤ 40
    assert [r["visual_tokens"] for r in records] == [24, 32]
    assert [r["pool_stride"] for r in records] == [2.0, 1.0]  # the compressor's report, kept per sample


def test_a_run_reports_the_chosen_factor(cfg_factory):
    """The chosen pooling factor lands in metrics.json (mean over samples) and in every prediction."""
    import json
    from pathlib import Path

    from vlc.run import train

    from conftest import TINY_DATA

    cfg = cfg_factory(["compressor=budget", "compressor.max_tokens=40", *TINY_DATA, "trainer.max_steps=1",
                       "trainer.val_check_interval=1", "callbacks.progress_bar.refresh_rate=0"])
    metrics = train(cfg)
    assert metrics["val/pool_stride"] == 2.0  # 8 frames · 16 = 128 > 40; 8 · 4 = 32 fits
    lines = Path(cfg.paths.output_dir, "predictions.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["pool_stride"] == 2 for line in lines)
