"""ShareGPT4Video keyframes: which frames stay on a constructed clip, their timestamps, the
max_frames cap, batch compaction, and the model end to end."""

from __future__ import annotations

import pytest
import torch

from vlc.compressors.keyframe import KeyframeSelection
from vlc.run import build_model
from vlc.tokens import FrameTokens

from conftest import fake_batch, record_column

D, N = 8, 4
e = torch.eye(D)
A = [e[0], e[0] + 0.1 * e[3], e[0] + 0.2 * e[3]]  # a slowly drifting scene: cos to A[0] ≥ 0.98
B = [e[1] + 0.3 * e[0], e[1] + 0.3 * e[0] + 0.1 * e[4]]  # a new scene: cos(A, B) ≈ 0.29
A2 = [e[2] - 0.5 * e[1], e[2] - 0.5 * e[1], e[2] - 0.5 * e[1]]  # a third: cos(B, A') ≈ -0.43
CLIP = A + B + A2  # frames 0-2: A, 3-4: B, 5-7: A'


def clip(features: list[torch.Tensor], real: int | None = None) -> FrameTokens:
    """One video whose frame t has N tokens averaging to features[t] (the tokens themselves differ)."""
    T = len(features)
    spread = torch.randn(T, N, D, generator=torch.Generator().manual_seed(0))
    spread = spread - spread.mean(1, keepdim=True)  # zero-mean, so the frame mean is the feature
    tokens = torch.stack(features)[:, None] + 0.01 * spread
    mask = torch.zeros(T, N, dtype=torch.bool)
    mask[: real or T] = True
    times = torch.arange(T, dtype=torch.float32) * 0.5 + 1.0
    return FrameTokens(tokens[None], mask[None], times[None], (2, 2))


def test_keeps_exactly_the_changed_frames_and_their_times():
    x = clip(CLIP)
    out = KeyframeSelection(threshold=0.93)(x)
    assert out.tokens.shape == (1, 3, N, D) and out.grid == (2, 2)
    assert out.times.tolist() == [[1.0, 2.5, 3.5]]  # frames 0, 3, 5 at 1.0 + 0.5·t
    torch.testing.assert_close(out.tokens[0], x.tokens[0, [0, 3, 5]])
    assert out.token_mask.all()


def test_compares_with_the_last_kept_frame_not_the_neighbour():
    # Each step turns by 10° (cos 0.985 to the neighbour): only every third frame has drifted
    # below cos 0.93 (≈ 21.6°) from the last keyframe.
    angles = torch.deg2rad(torch.arange(10) * 10.0)
    feats = [torch.cat([torch.stack([a.cos(), a.sin()]), torch.zeros(D - 2)]) for a in angles]
    out = KeyframeSelection(threshold=0.93)(clip(feats))
    assert out.times.tolist() == [[1.0, 2.5, 4.0, 5.5]]  # frames 0, 3, 6, 9


def test_max_frames_keeps_the_most_novel_in_time_order():
    # Novelty of the keyframes 0, 3, 5: −∞ (first), cos(A, B) ≈ 0.29, cos(B, A') ≈ −0.43.
    assert KeyframeSelection(max_frames=2)(clip(CLIP)).times.tolist() == [[1.0, 3.5]]  # frames 0, 5
    assert KeyframeSelection(max_frames=1)(clip(CLIP)).times.tolist() == [[1.0]]
    assert KeyframeSelection(max_frames=3)(clip(CLIP)).times.tolist() == [[1.0, 2.5, 3.5]]


def test_batch_is_compacted_to_the_most_kept_frames_and_padding_is_never_kept():
    long, short = clip(CLIP), clip(A + B + A2[:1] + A2[:1] * 2, real=4)  # short: frames 4.. are padding
    x = FrameTokens(
        torch.cat([long.tokens, short.tokens]), torch.cat([long.token_mask, short.token_mask]),
        torch.cat([long.times, short.times]), (2, 2),
    )
    out = KeyframeSelection()(x)
    assert out.tokens.shape == (2, 3, N, D)
    assert out.frame_mask.tolist() == [[True, True, True], [True, True, False]]  # short keeps 0, 3
    assert out.times[1, :2].tolist() == [1.0, 2.5]
    torch.testing.assert_close(out.tokens[1, :2], short.tokens[0, [0, 3]])


def test_gradients_flow_to_the_kept_tokens():
    x = clip(CLIP)
    tokens = x.tokens.clone().requires_grad_(True)
    out = KeyframeSelection()(x.replace(tokens=tokens))
    out.tokens.sum().backward()
    assert tokens.grad[0, [0, 3, 5]].eq(1).all() and tokens.grad[0, [1, 2, 4, 6, 7]].eq(0).all()


def test_config_errors():
    with pytest.raises(ValueError, match="threshold"):
        KeyframeSelection(threshold=1.5)
    with pytest.raises(ValueError, match="max_frames"):
        KeyframeSelection(max_frames=0)


def test_model_end_to_end(cfg_factory):
    torch.manual_seed(0)
    # threshold 1.0 keeps every frame that differs at all; the cap then leaves 2 of 6.
    overrides = ["~data", "compressor=keyframe", "compressor.threshold=1.0", "compressor.max_frames=2"]
    m = build_model(cfg_factory(overrides))
    b = fake_batch(B=2, T=6)
    loss = m(b)
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert record_column(m.eval(), b, "visual_tokens") == [2 * 16, 2 * 16]
