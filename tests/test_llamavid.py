"""LLaMA-VID's two tokens per frame: counts, the content token is the frame mean, the context token
follows the question (and only its real tokens), gradients, the lazy question projection, and the
model end to end."""

from __future__ import annotations

import pytest
import torch

from vlc.compressors.llamavid import LLaMAVIDTokens
from vlc.run import build_model
from vlc.tokens import FrameTokens, iter_cache_layers

from conftest import fake_batch, record_column

DIM, QDIM, N = 16, 12, 9


def frames(B: int = 2, T: int = 5, real: list[int] | None = None) -> FrameTokens:
    tokens = torch.randn(B, T, N, DIM, generator=torch.Generator().manual_seed(0))
    real = real or [T] * B
    frame_mask = torch.arange(T)[None] < torch.tensor(real)[:, None]
    times = (torch.arange(T, dtype=torch.float32) * 0.5)[None].expand(B, T).contiguous()
    return FrameTokens(tokens, frame_mask[..., None].expand(B, T, N).contiguous(), times, (3, 3))


def question(B: int = 2, L: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(B, L, QDIM, generator=torch.Generator().manual_seed(seed)), torch.ones(B, L, dtype=torch.long)


def build(**kw) -> LLaMAVIDTokens:
    torch.manual_seed(0)
    return LLaMAVIDTokens(DIM, **{"question_dim": QDIM, **kw})


def test_two_tokens_per_frame_context_then_content():
    x = frames(real=[5, 3])
    with torch.no_grad():
        out = build()(x, question=question())
    assert out.tokens.shape == (2, 5, 2, DIM) and out.grid is None
    assert torch.equal(out.times, x.times)
    assert out.num_tokens().tolist() == [10, 6]  # 2 per real frame
    assert LLaMAVIDTokens.reads_question is True
    # Content token: the mean of the frame's patches (on real frames; padding is masked out).
    torch.testing.assert_close(out.tokens[0, :, 1], x.tokens[0].mean(1))
    torch.testing.assert_close(out.tokens[1, :3, 1], x.tokens[1, :3].mean(1))


def test_context_follows_the_question_and_ignores_its_padding():
    x, lv = frames(), build()
    q1, q2 = question(seed=1), question(seed=2)
    with torch.no_grad():
        a, b = lv(x, question=q1), lv(x, question=q2)
        assert (a.tokens[:, :, 0] - b.tokens[:, :, 0]).abs().max() > 1e-4  # the context token moves
        torch.testing.assert_close(a.tokens[:, :, 1], b.tokens[:, :, 1])  # the content token does not
        # Padded question tokens (mask 0) change nothing.
        junk = 100 * torch.randn(2, 3, QDIM)
        padded = (torch.cat([q1[0], junk], 1), torch.cat([q1[1], torch.zeros(2, 3, dtype=torch.long)], 1))
        torch.testing.assert_close(lv(x, question=padded).tokens, a.tokens)


def test_context_is_an_average_of_the_frames_patches_before_the_value_projection():
    # With one query and a key projection of zero, attention is uniform: context = value(mean patch).
    lv = build(num_queries=1)
    with torch.no_grad():
        lv.key.weight.zero_()
        out = lv(frames(), question=question())
        torch.testing.assert_close(out.tokens[:, :, 0], lv.value(frames().tokens.mean(2)))


def test_gradients_reach_every_parameter():
    lv = build()
    out = lv(frames(real=[5, 2]), question=question())
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()
    for name, p in lv.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_question_is_required():
    with pytest.raises(ValueError, match="question=None"):
        build()(frames())


def test_lazy_question_projection_loads_from_a_state_dict():
    lazy = build(question_dim=None)
    with torch.no_grad():
        want = lazy(frames(), question=question()).tokens  # the first batch fixes the width
    assert lazy.question_proj.weight.shape == (DIM, QDIM)
    fresh = LLaMAVIDTokens(DIM, question_dim=None)
    fresh.load_state_dict(lazy.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(frames(), question=question()).tokens, want)


def test_model_end_to_end(cfg_factory):
    torch.manual_seed(0)
    m = build_model(cfg_factory(["~data", "compressor=llamavid"]))
    assert m.compressor.question_proj.in_features == m.backbone.llm.config.hidden_size == 128  # the model passes its LLM width
    b = fake_batch(B=2, T=6)
    loss = m(b)
    loss.backward()
    assert torch.isfinite(loss) and m.compressor.queries.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        assert record_column(m, b, "visual_tokens") == [12, 12]  # 6 frames × 2
        # The context (KV cache of prefix + visual) depends on the question.
        other = {**b, "questions": ["How many times does the circle move?"] * 2}
        k1 = next(iter_cache_layers(m.pipeline.encode_context(b).cache))[0]
        k2 = next(iter_cache_layers(m.pipeline.encode_context(other).cache))[0]
    assert k1.shape == k2.shape and (k1 - k2).abs().max() > 1e-5
