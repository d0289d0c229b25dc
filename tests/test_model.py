"""The VideoLLM path pinned against plain references: loss masking, prefill + continuation equal one
full forward, batching with padding changes nothing, option scoring, token counts of none/pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlc.compressors.pool import SpatialPool
from vlc.model.prefill import greedy_generate
from vlc.run import build_model
from vlc.tokens import FrameTokens

from conftest import fake_batch, option_scores, record_column


def _model(cfg_factory, *overrides):
    torch.manual_seed(0)
    return build_model(cfg_factory(["~data", *overrides])).eval()


def test_labels_cover_the_answer_only(cfg_factory):
    m = _model(cfg_factory)
    b = fake_batch()
    text = m.pipeline.prompt.training_batch(b["questions"], b["candidates"], b["answers"])
    for i, answer in enumerate(b["answers"]):
        labelled = text.labels[i][text.labels[i] != -100]
        assert m.backbone.tokenizer.decode(labelled) == f"{answer}<|im_end|>"
        q_len = len(m.pipeline.prompt.encode(m.pipeline.prompt.question_text(b["questions"][i], b["candidates"][i])))
        assert (text.labels[i, :q_len] == -100).all()
        assert (text.labels[i][text.mask[i] == 0] == -100).all()  # padding is never a target


def _full_forward_loss(m, batch, i):
    """Reference: one ordinary forward over [prefix | visual | question | answer] for sample i alone."""
    ft, _ = m.backbone.encoder(batch["pixels"][i : i + 1], batch["frame_mask"][i : i + 1], batch["times"][i : i + 1])
    ft = m.compressor(ft)
    vis = m.backbone.projector(ft.tokens)[0][ft.token_mask[0]]  # (Lv, D)
    text = m.pipeline.prompt.training_batch(batch["questions"][i : i + 1], batch["candidates"][i : i + 1], batch["answers"][i : i + 1])
    prefix = torch.tensor(m.pipeline.prompt.prefix_ids())
    embeds = torch.cat([m.pipeline.embed(prefix), vis, m.pipeline.embed(text.ids[0])])[None]
    labels = torch.cat([torch.full((len(prefix) + len(vis),), -100), text.labels[0]])[None]
    logits = m.backbone.llm(inputs_embeds=embeds).logits
    return F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum"), (labels != -100).sum()


def test_context_then_continuation_equals_one_full_forward(cfg_factory):
    for compressor in ("none", "pool"):
        m = _model(cfg_factory, f"compressor={compressor}")
        b = fake_batch(B=2)
        b["frame_mask"][1, 4:] = False  # sample 1 is shorter: left padding in the context
        with torch.no_grad():
            batched = m(b)
            sums, counts = zip(*(_full_forward_loss(m, b, i) for i in range(2)))
        torch.testing.assert_close(batched, sum(sums) / sum(counts), atol=1e-5, rtol=1e-5)


def test_scores_and_generation_do_not_depend_on_batch_mates(cfg_factory):
    m = _model(cfg_factory)
    b = fake_batch(B=2)
    b["frame_mask"][1, 3:] = False
    with torch.no_grad():
        both = option_scores(m, b)
        alone = option_scores(m, {k: v[1:] for k, v in b.items()})
        gen_both, gen_alone = m.pipeline.generate(b, 5), m.pipeline.generate({k: v[1:] for k, v in b.items()}, 5)
    torch.testing.assert_close(both[1, :3], alone[0, :3], atol=1e-4, rtol=1e-4)
    assert both[1, 3] == float("-inf")  # sample 1 has 3 options: the 4th column is padding
    assert gen_both[1] == gen_alone[0]


def test_option_scores_equal_summed_token_logprobs(cfg_factory):
    m = _model(cfg_factory)
    b = fake_batch(B=2)
    with torch.no_grad():
        scores = option_scores(m, b)
        # Reference for sample 0, option 2: a full forward over everything, summing log p of the option's tokens.
        ft, _ = m.backbone.encoder(b["pixels"][:1], b["frame_mask"][:1], b["times"][:1])
        vis = m.backbone.projector(ft.tokens)[0][ft.token_mask[0]]
        q = m.pipeline.prompt.encode(m.pipeline.prompt.question_text(b["questions"][0], b["candidates"][0]))
        opt = m.pipeline.prompt.encode(m.pipeline.prompt.candidate_texts(b["candidates"][0])[2])
        prefix = m.pipeline.prompt.prefix_ids()
        embeds = torch.cat([m.pipeline.embed(torch.tensor(prefix)), vis, m.pipeline.embed(torch.tensor(q + opt))])[None]
        logp = torch.log_softmax(m.backbone.llm(inputs_embeds=embeds).logits[0], -1)
        start = len(prefix) + len(vis) + len(q)
        ref = sum(logp[start + j - 1, t] for j, t in enumerate(opt))
    torch.testing.assert_close(scores[0, 2], ref, atol=1e-4, rtol=1e-4)


def test_token_counts_and_kv_bytes_of_none_and_pool(cfg_factory):
    for compressor, per_frame in (("none", 16), ("pool", 4)):
        m = _model(cfg_factory, f"compressor={compressor}")
        b = fake_batch(B=2, T=6)
        b["frame_mask"][1, 5:] = False
        out = {key: record_column(m, b, key) for key in ("visual_tokens", "kv_tokens", "kv_bytes")}
        prefix = len(m.pipeline.prompt.prefix_ids())
        assert out["visual_tokens"] == [6 * per_frame, 5 * per_frame]
        assert out["kv_tokens"] == [prefix + 6 * per_frame, prefix + 5 * per_frame]
        cfg = m.backbone.llm.config
        per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
        assert out["kv_bytes"] == [per_token * (prefix + 6 * per_frame), per_token * (prefix + 5 * per_frame)]


def test_pool_on_clip_geometry_and_odd_grids():
    x = FrameTokens(torch.randn(1, 2, 576, 8), torch.ones(1, 2, 576, dtype=torch.bool), torch.tensor([[0.0, 1.0]]), (24, 24))
    y = SpatialPool(2)(x)
    assert y.tokens.shape == (1, 2, 144, 8) and y.grid == (12, 12)  # Video-XL: 576 → 144 per frame
    torch.testing.assert_close(y.tokens[0, 0, 0], x.tokens[0, 0].view(24, 24, 8)[:2, :2].mean((0, 1)))
    odd = FrameTokens(torch.randn(1, 1, 25, 4), torch.ones(1, 1, 25, dtype=torch.bool), torch.zeros(1, 1), (5, 5))
    assert SpatialPool(2)(odd).grid == (3, 3)


def test_time_markers_once_per_kept_frame(cfg_factory):
    m = _model(cfg_factory, "prompt.time_markers=true")
    b = fake_batch(B=1, T=5)
    b["frame_mask"][0, 4] = False
    ft, _ = m.backbone.encoder(b["pixels"], b["frame_mask"], b["times"])
    span, mask = m.pipeline.prompt.visual_span(m.backbone.projector(ft.tokens), ft, m.backbone.llm.get_input_embeddings())
    marker = m.pipeline.prompt.marker_ids(0.5)
    assert m.backbone.tokenizer.decode(marker) == "Time 0.5s:"
    n_markers = sum(len(m.pipeline.prompt.marker_ids(float(t))) for t in b["times"][0, :4])
    assert int(mask.sum()) == 4 * 16 + n_markers


def test_greedy_generation_matches_stepwise_argmax(cfg_factory):
    m = _model(cfg_factory)
    b = fake_batch(B=1)
    with torch.no_grad():
        ctx = m.pipeline.encode_context(b)
        q = m.pipeline.prompt.question_batch(b["questions"], b["candidates"])
        out = greedy_generate(m.backbone.llm, ctx, m.pipeline.embed(q.ids), q.mask, 4, eos_token_id=-1)
        # Reference: recompute the whole sequence each step.
        ft, _ = m.backbone.encoder(b["pixels"], b["frame_mask"], b["times"])
        vis = m.backbone.projector(ft.tokens)[0][ft.token_mask[0]]
        seq = torch.cat([m.pipeline.embed(torch.tensor(m.pipeline.prompt.prefix_ids())), vis, m.pipeline.embed(q.ids[0])])
        ref = []
        for _ in range(4):
            nxt = m.backbone.llm(inputs_embeds=seq[None]).logits[0, -1].argmax()
            ref.append(int(nxt))
            seq = torch.cat([seq, m.pipeline.embed(nxt[None])])
    assert out[0].tolist() == ref


def test_uncompressed_phase_bypasses_any_compressor_in_training_only(cfg_factory):
    """model.uncompressed_steps: while training and global_step < N the compressor is skipped
    (all 16 tokens per frame reach the LLM); evaluation always compresses."""
    m = _model(cfg_factory, "compressor=pool", "model.uncompressed_steps=3")
    assert m.uncompressed_steps == 3 and int(m.compression_started_at) == -1
    b = fake_batch(B=1, T=4)
    m.train()  # no trainer attached: global_step is 0, inside the phase
    with torch.no_grad():
        assert m.compressing is False
        assert m.pipeline.encode_context(b, compress=m.compressing).visual_tokens.tolist() == [4 * 16]
    m.eval()
    with torch.no_grad():
        assert m.pipeline.encode_context(b, compress=m.compressing).visual_tokens.tolist() == [4 * 4]
    m = _model(cfg_factory, "compressor=pool")  # default 0: compressed from the first step
    m.train()
    with torch.no_grad():
        assert m.pipeline.encode_context(b, compress=m.compressing).visual_tokens.tolist() == [4 * 4]
