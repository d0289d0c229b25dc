"""Q-Former modes (Video-LLaMA global, TimeChat sliding, VTG-LLM slots): counts, times, masking,
gradients and the frame-order ablation; the question-aware option (InstructBLIP / VideoChat2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vlc.compressors import build_compressor
from vlc.compressors.qformer import QFormer
from vlc.run import build_model
from vlc.tokens import FrameTokens

from conftest import fake_batch, record_column

CONFIGS = Path(__file__).parents[1] / "configs" / "compressor"
DIM = 16


def frames(B: int, T: int, N: int = 4, real: list[int] | None = None, seed: int = 0) -> FrameTokens:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, T, N, DIM, generator=g)
    real = real or [T] * B
    frame_mask = torch.arange(T)[None] < torch.tensor(real)[:, None]
    times = torch.arange(T, dtype=torch.float32)[None].expand(B, T) * 0.5
    return FrameTokens(tokens, frame_mask[..., None].expand(B, T, N).contiguous(), times.contiguous(), None)


def build(**override) -> QFormer:
    cfg = OmegaConf.load(CONFIGS / "qformer.yaml")
    cfg.update(override)
    torch.manual_seed(0)
    return build_compressor(cfg, dim=DIM).eval()


@pytest.mark.parametrize("mode, T, shape", [("global", 8, (1, 32)), ("sliding", 96, (3, 32)), ("slots", 8, (1, 256))])
def test_token_counts(mode, T, shape):
    with torch.no_grad():
        out = build(mode=mode)(frames(1, T, N=2))
    assert out.tokens.shape == (1, *shape, DIM) and out.grid is None
    assert int(out.num_tokens()) == shape[0] * shape[1]


def test_sliding_times_are_window_means():
    with torch.no_grad():
        out = build(mode="sliding")(frames(1, 96, N=2))
    # frame t at 0.5·t s; windows [0,32) [32,64) [64,96)
    assert out.times.tolist() == [[7.75, 23.75, 39.75]]
    with torch.no_grad():
        out = build(mode="global")(frames(1, 8))
    assert out.times.tolist() == [[1.75]]


@pytest.mark.parametrize("mode", ["global", "sliding", "slots"])
def test_padded_frames_do_not_leak(mode):
    qf = build(mode=mode, window=4, stride=4, max_frames=8)
    batch = frames(2, 12, real=[12, 6], seed=1)
    alone = FrameTokens(batch.tokens[1:, :6], batch.token_mask[1:, :6], batch.times[1:, :6], None)
    with torch.no_grad():
        got, want = qf(batch), qf(alone)
    G = want.tokens.shape[1]
    torch.testing.assert_close(got.tokens[1, :G], want.tokens[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.times[1, :G], want.times[0])
    assert got.token_mask[1, :G].all() and not got.token_mask[1, G:].any()
    assert torch.isfinite(got.tokens).all()


@pytest.mark.parametrize("mode", ["global", "sliding", "slots"])
def test_gradients_reach_every_parameter(mode):
    qf = build(mode=mode, window=2, stride=2).train()
    out = qf(frames(1, 4))
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()
    for name, p in qf.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frame_pos_is_what_keeps_temporal_order():
    x = frames(1, 8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    shuffled = x.replace(tokens=x.tokens[:, perm])
    with torch.no_grad():
        blind = build(frame_pos=False)
        torch.testing.assert_close(blind(shuffled).tokens, blind(x).tokens, atol=1e-5, rtol=0)
        ordered = build(frame_pos=True)
        assert (ordered(shuffled).tokens - ordered(x).tokens).abs().max() > 1e-3


def test_more_frames_than_the_table_interpolates():
    qf = build(max_frames=4)
    emb = qf.frame_embedding(torch.ones(1, 7, dtype=torch.bool))  # 7 frames over 4 rows
    torch.testing.assert_close(emb[0, 0], qf.frame_pos[0])
    torch.testing.assert_close(emb[0, 2], qf.frame_pos[1])
    torch.testing.assert_close(emb[0, 6], qf.frame_pos[3])
    torch.testing.assert_close(emb[0, 1], (qf.frame_pos[0] + qf.frame_pos[1]) / 2)
    with torch.no_grad():
        assert qf(frames(1, 7)).tokens.shape == (1, 1, 32, DIM)


def test_slot_softmax_runs_over_tokens():
    qf = build(mode="slots")
    x = torch.randn(1, 10, DIM)
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 7:] = False
    slots = qf.slot_readout(x, mask)
    # every slot is a convex combination of the real tokens: with all real tokens equal, it is that token
    same = x[:, :1].expand(1, 10, DIM).clone()
    same[0, 7:] = 100.0  # masked tokens must not count
    torch.testing.assert_close(qf.slot_readout(same, mask), x[:, :1].expand(1, 256, DIM), atol=1e-5, rtol=1e-5)
    assert slots.shape == (1, 256, DIM)


def test_config_errors():
    with pytest.raises(ValueError, match="mode"):
        QFormer(DIM, mode="perceiver")
    with pytest.raises(ValueError, match="heads"):
        QFormer(DIM, heads=3)


# ---- question-aware Q-Former (InstructBLIP / VideoChat2) ----------------------------------------
QDIM = 12


def question(B: int = 1, L: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(B, L, QDIM, generator=torch.Generator().manual_seed(seed)), torch.ones(B, L, dtype=torch.long)


def build_qa(**override) -> QFormer:
    cfg = OmegaConf.load(CONFIGS / "qformer_qa.yaml")
    cfg.update({"question_dim": QDIM, **override})
    torch.manual_seed(0)
    return build_compressor(cfg, dim=DIM).eval()


@pytest.mark.parametrize("mode", ["global", "sliding"])
def test_question_aware_output_follows_the_question(mode):
    qf = build_qa(mode=mode, window=4, stride=4)
    assert qf.reads_question is True
    x = frames(1, 8)
    with torch.no_grad():
        a, b = qf(x, question=question(seed=1)), qf(x, question=question(seed=2))
    assert a.tokens.shape == (1, 1 if mode == "global" else 2, 32, DIM)  # only the queries come back
    assert (a.tokens - b.tokens).abs().max() > 1e-4


def test_default_qformer_never_reads_a_question():
    qf = build()
    assert qf.reads_question is False and not hasattr(qf, "question_proj")
    x = frames(1, 8)
    with torch.no_grad():
        plain = qf(x)
        torch.testing.assert_close(qf(x, question=question(seed=1)).tokens, plain.tokens)
        torch.testing.assert_close(qf(x, question=question(seed=2)).tokens, plain.tokens)


def test_question_padding_and_batch_mates_change_nothing():
    qf = build_qa(mode="sliding", window=4, stride=4, max_frames=8)
    x = frames(2, 8, real=[8, 5], seed=1)
    q_short, q_long = question(L=3, seed=3), question(L=6, seed=4)
    # One batch: sample 0 asks the 3-token question (padded to 6 with junk), sample 1 the 6-token one.
    embeds = torch.cat([torch.cat([q_short[0], 50 * torch.randn(1, 3, QDIM)], 1), q_long[0]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    with torch.no_grad():
        both = qf(x, question=(embeds, mask))
        alone0 = qf(FrameTokens(x.tokens[:1], x.token_mask[:1], x.times[:1], None), question=q_short)
        alone1 = qf(FrameTokens(x.tokens[1:, :5], x.token_mask[1:, :5], x.times[1:, :5], None), question=q_long)
    torch.testing.assert_close(both.tokens[0], alone0.tokens[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.tokens[1, :2], alone1.tokens[0], atol=1e-5, rtol=1e-5)


def test_question_aware_gradients_reach_every_parameter():
    qf = build_qa(mode="sliding", window=2, stride=2).train()
    out = qf(frames(1, 4), question=question())
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()
    for name, p in qf.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_question_aware_errors_and_lazy_width():
    with pytest.raises(ValueError, match="question_aware"):
        QFormer(DIM, mode="slots", question_aware=True)
    with pytest.raises(ValueError, match="question=None"):
        build_qa()(frames(1, 4))
    # The config alone (no model group to read the LLM width from) leaves question_dim null: the
    # projection takes its width from the first question.
    lazy = build_compressor(OmegaConf.load(CONFIGS / "qformer_qa.yaml"), dim=DIM)
    with torch.no_grad():
        lazy(frames(1, 4), question=question())
    assert lazy.question_proj.weight.shape == (DIM, QDIM)


def test_question_aware_model_end_to_end(cfg_factory):
    torch.manual_seed(0)
    m = build_model(cfg_factory(["~data", "compressor=qformer_qa"]))
    assert m.compressor.reads_question is True
    assert m.compressor.question_proj.in_features == m.backbone.llm.config.hidden_size  # the model passes its LLM width
    b = fake_batch(B=2, T=6)
    loss = m(b)
    loss.backward()
    assert torch.isfinite(loss) and m.compressor.question_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert record_column(m.eval(), b, "visual_tokens") == [32, 32]
