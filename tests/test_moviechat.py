"""MovieChat memory: memory lengths, which pair merges first, the cap, breakpoint mode, batching,
and position embeddings rebuilt from the loaded weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vlc.compressors import build_compressor
from vlc.compressors.moviechat import Frames, MovieChatMemory, consolidate
from vlc.tokens import FrameTokens

CONFIGS = Path(__file__).parents[1] / "configs" / "compressor"
D, N = 8, 4


def clip(B: int, T: int, real: list[int] | None = None, seed: int = 0) -> FrameTokens:
    """Random frames at 1 fps (times = frame index); frames past real[b] are padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, T, N, D, generator=g)
    real = real or [T] * B
    frame_mask = torch.arange(T)[None] < torch.tensor(real)[:, None]  # (B, T)
    tokens[~frame_mask] = 1e4  # garbage in padded frames: must never reach memory
    times = torch.arange(T, dtype=torch.float32)[None].expand(B, T).contiguous()
    return FrameTokens(tokens, frame_mask[..., None].expand(B, T, N).contiguous(), times, (2, 2))


def no_positions(m: MovieChatMemory) -> MovieChatMemory:
    m.load_state_dict({"frame_position.weight": torch.zeros_like(m.frame_position.weight)})
    return m


def test_config_defaults_are_the_papers():
    m = build_compressor(OmegaConf.load(CONFIGS / "moviechat.yaml"), D)
    assert isinstance(m, MovieChatMemory)
    assert (m.short_len, m.merge_to, m.long_len, m.alpha, m.mode) == (18, 2, 256, 0.01, "global")
    assert m.frame_position.weight.shape == (16, D)
    assert m.position_table().shape == (256, D)
    assert [n for n, _ in m.named_parameters()] == ["frame_position.weight"]  # trainable: positions only


def test_128_frames_give_16_memory_frames():
    # 128 = 7 × 18 + 2: seven full buffers → 7 × 2 = 14 frames; the 2-frame tail is consolidated
    # the same way (already ≤ merge_to, so it stays 2) → 16.
    m = MovieChatMemory(D)
    out = m(clip(1, 128))
    assert out.tokens.shape == (1, 16, N, D)
    assert out.token_mask.all() and out.grid == (2, 2)
    assert out.times[0, -2:].tolist() == [126.0, 127.0]  # the tail frames, un-merged
    assert (out.times[0, 1:] > out.times[0, :-1]).all()  # merges are of adjacent frames: order kept

    memory = m.global_memory(Frames(torch.randn(128, N, D), torch.ones(128, N, dtype=torch.bool),
                                    torch.arange(128.0), torch.ones(128, dtype=torch.long)))
    assert memory.count.tolist()[-2:] == [1, 1] and memory.count.sum() == 128  # every frame counted once


def near_duplicate_clip(T: int = 18) -> FrameTokens:
    """Frame t points along basis vector t (adjacent frames orthogonal); frame 5 ≈ frame 4."""
    g = torch.Generator().manual_seed(1)
    tokens = 0.01 * torch.randn(1, T, N, 32, generator=g)
    for t in range(T):
        tokens[0, t, :, t] += 1.0
    tokens[0, 5] = tokens[0, 4] + 0.001 * torch.randn(N, 32, generator=g)
    times = 0.5 * torch.arange(T, dtype=torch.float32)[None] + 3.0
    return FrameTokens(tokens, torch.ones(1, T, N, dtype=torch.bool), times, (2, 2))


def test_first_merge_is_the_most_similar_adjacent_pair():
    x = near_duplicate_clip()
    run = Frames(x.tokens[0], x.token_mask[0], x.times[0], torch.ones(18, dtype=torch.long))
    once = consolidate(run, keep=17)
    assert len(once) == 17
    torch.testing.assert_close(once.tokens[4], (x.tokens[0, 4] + x.tokens[0, 5]) / 2)
    assert (once.time_sum / once.count)[4].item() == pytest.approx((5.0 + 5.5) / 2)
    assert once.count.tolist() == [1] * 4 + [2] + [1] * 12

    # The same through the module: a full 18-frame buffer merged down to 17.
    m = no_positions(MovieChatMemory(32, short_len=18, merge_to=17))
    out = m(x)
    assert out.tokens.shape[1] == 17
    assert out.times[0, 4].item() == pytest.approx(5.25)
    torch.testing.assert_close(out.tokens[0, 4], (x.tokens[0, 4] + x.tokens[0, 5]) / 2)


def test_merges_are_pairwise_means_not_member_weighted():
    # Three identical-direction frames: the second merge averages a merged frame with a raw one.
    a, b, c = torch.full((1, N, D), 1.0), torch.full((1, N, D), 2.0), torch.full((1, N, D), 4.0)
    run = Frames(torch.cat([a, b, c]), torch.ones(3, N, dtype=torch.bool), torch.tensor([0.0, 1.0, 2.0]),
                 torch.ones(3, dtype=torch.long))
    one = consolidate(run, keep=1)
    # first pair (b, c): similarity 8·D > 2·D; then (a, bc): (1 + 3) / 2 = 2, not (1 + 2 + 4) / 3.
    assert one.tokens.unique().tolist() == [2.0]
    assert (one.time_sum / one.count).item() == pytest.approx(1.0)  # times: the mean of all members


def test_long_term_memory_cap_drops_the_oldest():
    # 40 frames, buffer 4 → 2: nine full buffers + the 4-frame tail → 20 frames, capped at 6:
    # the last three consolidations (frames 28–39) survive.
    m = MovieChatMemory(D, short_len=4, merge_to=2, long_len=6, num_base_pos=4)
    out = m(clip(1, 40))
    assert out.tokens.shape[1] == 6
    assert out.times.min().item() >= 28.0
    assert m(clip(1, 400)).tokens.shape[1] == 6  # the cap holds however long the video


def test_breakpoint_mode_memory_buffer_and_current_frame():
    # Breakpoint at 21.2 s → current frame 21. Frames 0–21 stream in: five full buffers of 4
    # (frames 0–19) → 10 memory frames; the buffer holds frames 20, 21 un-merged; then frame 21.
    x = clip(1, 40)
    m = no_positions(MovieChatMemory(D, short_len=4, merge_to=2, long_len=64, num_base_pos=8,
                                     mode="breakpoint", breakpoint_time=21.2))
    out = m(x)
    assert out.tokens.shape[1] == 13
    assert out.times[0, 10:].tolist() == [20.0, 21.0, 21.0]
    torch.testing.assert_close(out.tokens[0, 10:], x.tokens[0, [20, 21, 21]])
    assert out.times[0, :10].max().item() < 20.0  # nothing after the breakpoint was seen

    with pytest.raises(ValueError, match="breakpoint_time"):
        MovieChatMemory(D, mode="breakpoint")(x)


def test_breakpoint_overflow_evicts_buffer_first():
    # 2² = 4 positions. Frames 0–5 stream in: memory = frames 0–2 merged to 2, buffer = 3, 4, 5;
    # 2 + 3 + 1 (current) = 6 > 4 → the 2 oldest buffer frames (3, 4) go, memory stays.
    x = clip(1, 7)
    m = MovieChatMemory(D, short_len=3, merge_to=2, long_len=4, num_base_pos=2, mode="breakpoint",
                        breakpoint_time=5.0)
    out = m(x)
    assert out.tokens.shape[1] == 4
    assert out.times[0, 2:].tolist() == [5.0, 5.0] and out.times[0, :2].max().item() <= 2.0


def test_batch_samples_are_independent_and_padding_never_enters():
    x = clip(2, 40, real=[40, 20], seed=3)
    m = MovieChatMemory(D, short_len=4, merge_to=2, long_len=64, num_base_pos=8)
    out = m(x)
    # 40 frames → 9 × 2 + 2 = 20; 20 frames → 4 × 2 + 2 = 10 (then padding).
    assert out.tokens.shape == (2, 20, N, D)
    assert out.frame_mask.sum(1).tolist() == [20, 10]
    assert out.tokens.abs().max() < 100  # the 1e4 garbage of padded frames is nowhere
    alone = m(FrameTokens(x.tokens[1:, :20], x.token_mask[1:, :20], x.times[1:, :20], x.grid))
    torch.testing.assert_close(out.tokens[1, :10], alone.tokens[0])
    torch.testing.assert_close(out.times[1, :10], alone.times[0])


def moviechat_table(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """The expansion written out as MovieChat's loops write it."""
    u = [(p_i - alpha * p[0]) / (1 - alpha) for p_i in p]
    return torch.stack([alpha * u[i] + (1 - alpha) * u[j] for i in range(len(p)) for j in range(len(p))])


def test_position_embeddings_follow_loaded_weights():
    x = clip(1, 40)
    m = MovieChatMemory(D, short_len=4, merge_to=2, long_len=16, num_base_pos=4)
    bare = no_positions(m)(x).tokens  # (1, 16, N, D): memory without positions

    base = torch.randn(4, D, generator=torch.Generator().manual_seed(7))
    m.load_state_dict({"frame_position.weight": base})  # after construction and a first forward
    added = m(x).tokens - bare  # (1, 16, N, D)
    expected = moviechat_table(base, 0.01)  # (16, D)
    torch.testing.assert_close(added[0], expected[:, None, :].expand(16, N, D), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(expected[:4], base)  # the first n positions are the learned ones
    # Position 4 = block 1, frame 0: α·u_1 + (1 − α)·u_0 with u_0 = p_0.
    u1 = (base[1] - 0.01 * base[0]) / 0.99
    torch.testing.assert_close(expected[4], 0.01 * u1 + 0.99 * base[0])

    m(x).tokens.sum().backward()
    assert m.frame_position.weight.grad.abs().sum() > 0  # trainable through the added positions
