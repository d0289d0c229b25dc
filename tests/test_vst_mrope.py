"""vst on Qwen2.5-VL's 3-D M-RoPE (docs/mrope.md): which positions raw tokens, beacons and the text
after the video get, pinned on the tiny checkpoint loaded through build_backbone.

The span: 4 temporal groups × 8 tokens (2 × 4 grid, τ = 0, 2, 4, 6 at 2 fps), 32 entries at
(τ, row, column) past the prefix S, which ends with <|vision_start|>; the text after the video opens
with <|vision_end|>. Natively the largest position is S + 6 and the text starts at S + 7.
"""

from __future__ import annotations

import pytest
import torch

from hf_tiny_qwen import frames_at, tiny_qwen2_5_vl, vlc_forward
from vlc.backbone.hf import build_backbone
from vlc.compressors.vst import VisualSummarizationTokens
from vlc.model.prefill import continue_from, default_prefill

QUESTION, ANSWER = "What color is the shape?", "red"
TIMES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    path = tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen2_5_vl"))
    return build_backbone("qwen2_5_vl", str(path), dtype="float32", attn_implementation="sdpa").eval()


def span_of(backbone, seed=0, times=TIMES):
    frames = frames_at(times, 56, 112, seed=seed)[None]
    with torch.no_grad():
        ft, _ = backbone.encode(frames, torch.ones(1, len(times), dtype=torch.bool), torch.tensor([times]))
        return backbone.visual_span(backbone.project(ft))


def prefill(backbone, vst, spans, chunk=None):
    """Sink = the prompt's prefix; the spans (batched) as (embeds, mask, positions shifted past it)."""
    prefix = torch.tensor([backbone.prompt.prefix_ids()] * len(spans))
    S = prefix.shape[1]
    embeds = torch.cat([s.embeds for s in spans])
    mask = torch.cat([s.mask for s in spans])
    pos = S + torch.cat([s.positions for s in spans], 1)
    n = embeds.shape[1]
    size = chunk or n
    visual = [(embeds[:, i : i + size], mask[:, i : i + size], pos[:, :, i : i + size]) for i in range(0, n, size)]
    with torch.no_grad():
        return vst.prefill(backbone.llm, backbone.embed(prefix), torch.ones_like(prefix), visual), S


def continuation(backbone, ctx, B=1):
    p = backbone.prompt
    ids = torch.tensor([p.encode(p.question_text(QUESTION, None) + p.answer_text(ANSWER, None))] * B)
    with torch.no_grad():
        return continue_from(backbone.llm, ctx, backbone.embed(ids), torch.ones_like(ids))


def make_vst(backbone, **kw):
    vst = VisualSummarizationTokens(ratios=(4,), **kw).eval()
    vst.bind(backbone.llm, backbone.tokenizer)
    return vst


def record_positions(backbone):
    """Every position_ids the decoder's rotary embedding is called with, in order."""
    seen = []
    handle = backbone.llm.get_decoder().rotary_emb.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    return seen, handle


@pytest.mark.parametrize("window, chunk", [(10, None), (16, 5), (100, None)])
def test_no_compression_equals_the_full_forward_with_the_native_positions(backbone, window, chunk):
    """compress=False: every raw entry keeps its native 3-D position, so windowed prefill + the text
    equals the pipeline's one forward over prefix | span with Qwen2.5-VL's positions (the path the
    HF equality tests pin): cache S + 32, largest position S + 6, text from S + 7."""
    span = span_of(backbone)
    with torch.no_grad():
        full, _, _, before, _ = vlc_forward(backbone, frames_at(TIMES, 56, 112), TIMES, QUESTION, ANSWER)
    vst = make_vst(backbone, window=window, ratio=4, compress=False)
    ctx, S = prefill(backbone, vst, [span], chunk)
    assert S == len(before) and ctx.length == S + 32 and ctx.next_position.tolist() == [S + 7]
    assert vst.last_max_position == S + 6
    logits = continuation(backbone, ctx)
    assert (logits - full).abs().max() <= 1e-4


@pytest.mark.parametrize("ratio, beacons", [(4, 8), (2, 16)])
def test_beacons_take_the_position_of_the_raw_token_they_follow(backbone, ratio, beacons):
    """window 12 over the 32 entries: raw tokens run at their own positions (S + native), each beacon
    at the position of the last raw token of its group, and the memory keeps those positions. The
    cache holds sink + 32 / r beacons (as 1-D vst); the text continues at S + 7, where it does
    uncompressed, and the largest position stays the video's own, S + 6, whatever the ratio."""
    span = span_of(backbone)
    vst = make_vst(backbone, window=12, ratio=ratio)
    seen, handle = record_positions(backbone)
    try:
        ctx, S = prefill(backbone, vst, [span])
    finally:
        handle.remove()
    per = 12 // ratio  # beacons of a full window
    assert vst.last_windows == [(12, ratio, per), (12, ratio, per), (8, ratio, 8 // ratio)]
    assert ctx.length == S + beacons and ctx.next_position.tolist() == [S + 7]
    assert vst.last_max_position == S + 6
    native = S + span.positions[:, 0]  # (3, 32)
    followed = [(j + 1) * ratio - 1 for j in range(beacons)]  # the raw token each beacon follows
    sink, w1, w2, w3, final = seen[:5]  # then the cache's re-rotation again for the second layer
    assert torch.equal(sink[0], torch.arange(S))
    # Window 1 (entries 0-11), slot by slot: raw tokens, and after every r of them a beacon.
    groups = [[*range(j * ratio, (j + 1) * ratio), (j + 1) * ratio - 1] for j in range(per)]
    assert torch.equal(w1[:, 0, S:], torch.stack([native[:, t] for group in groups for t in group], 1))
    # Window 2 sees the sink at 0 … S-1 and window 1's beacons at the positions they ran with.
    memory = torch.cat([torch.arange(S).expand(3, S), native[:, followed[:per]]], 1)
    assert torch.equal(w2[:, 0, : S + per], memory)
    # Window 3 ends with group 3's last two tokens, (S+6, S+1, S+2) and (S+6, S+1, S+3), and the beacon
    # after the second, at its position.
    assert w3[:, 0, -3:].T.tolist() == [[S + 6, S + 1, S + 2], [S + 6, S + 1, S + 3], [S + 6, S + 1, S + 3]]
    # The cache: the sink, then every beacon at the position of the raw token it follows.
    assert torch.equal(final, torch.cat([torch.arange(S).expand(3, S), native[:, followed]], 1)[:, None])
    assert torch.isfinite(continuation(backbone, ctx)).all()


@pytest.mark.parametrize("window", [8, 10, 64])
def test_beacon_positions_do_not_depend_on_the_window(backbone, window):
    """Windows compress whole beacon groups and carry the rest, so at ratio 4 the beacons follow raw
    tokens 3, 7, …, 31 and sit at their positions however the span is cut (window 12 above)."""
    span = span_of(backbone)
    vst = make_vst(backbone, window=window, ratio=4)
    seen, handle = record_positions(backbone)
    try:
        ctx, S = prefill(backbone, vst, [span], chunk=7)
    finally:
        handle.remove()
    native = S + span.positions[:, 0]
    followed = [3, 7, 11, 15, 19, 23, 27, 31]
    assert torch.equal(seen[-1][:, 0], torch.cat([torch.arange(S).expand(3, S), native[:, followed]], 1))
    assert ctx.length == S + 8 and ctx.next_position.tolist() == [S + 7] and vst.last_max_position == S + 6


@pytest.mark.parametrize("compress", [False, True])
def test_text_continues_past_the_largest_position_not_the_last(backbone, compress):
    """8 frames at 8 fps (τ 0, 0, 1, 1) with the last group pruned to its first token: the last entry
    sits at (S+1, S, S) but column 3 reached S + 3 earlier, so the text continues at S + 4, as
    ``default_prefill`` continues it, with or without beacons."""
    times = [i / 8 for i in range(8)]
    frames = frames_at(times, 56, 112)[None]
    with torch.no_grad():
        ft, _ = backbone.encode(frames, torch.ones(1, 8, dtype=torch.bool), torch.tensor([times]))
        ft = backbone.project(ft)
        ft.token_mask[0, 3, 1:] = False
        span = backbone.visual_span(ft)
    assert span.embeds.shape[1] == 25 and span.positions[:, 0, -1].tolist() == [1, 0, 0]
    vst = make_vst(backbone, window=8, ratio=4, compress=compress)
    ctx, S = prefill(backbone, vst, [span])
    assert ctx.next_position.tolist() == [S + 4]
    if not compress:
        prefix = backbone.embed(torch.tensor([backbone.prompt.prefix_ids()]))
        positions = torch.cat([torch.arange(S).expand(3, 1, S), S + span.positions], 2)
        with torch.no_grad():
            plain = default_prefill(backbone.llm, torch.cat([prefix, span.embeds], 1), torch.ones(1, S + 25).long(),
                                    torch.tensor([25]), positions)
        assert plain.next_position.tolist() == [S + 4]
        torch.testing.assert_close(continuation(backbone, ctx), continuation(backbone, plain), atol=1e-4, rtol=1e-4)


def test_batch_equals_single_samples(backbone):
    """Two videos at different frame rates (τ 0, 2, 4, 6 and 0, 4, 8, 12) in lockstep, and one with a
    shorter span (masked) that splits the batch: each row equals the sample prefilled alone."""
    spans = [span_of(backbone, seed=0), span_of(backbone, seed=1, times=[t * 2 for t in TIMES])]
    short = span_of(backbone, seed=2, times=TIMES[:4])  # 2 groups: 16 entries
    pad = spans[0].embeds.shape[1] - short.embeds.shape[1]
    short_padded = type(short)(torch.nn.functional.pad(short.embeds, (0, 0, 0, pad)),
                               torch.nn.functional.pad(short.mask, (0, pad)),
                               torch.nn.functional.pad(short.positions, (0, pad)))
    for batch in ([spans[0], spans[1]], [spans[0], short_padded]):
        vst = make_vst(backbone, window=16, ratio=4)
        ctx, S = prefill(backbone, vst, batch)
        lengths = (ctx.length, ctx.next_position.tolist())
        logits = continuation(backbone, ctx, B=2)
        for row, sample in enumerate([batch[0], spans[1] if batch[1] is spans[1] else short]):
            alone, _ = prefill(backbone, vst, [sample])
            torch.testing.assert_close(logits[row], continuation(backbone, alone)[0], atol=1e-4, rtol=1e-4)
    # 8 and 4 beacons (the shorter sample left-padded); each text continues where it does uncompressed
    assert lengths == (S + 8, [S + 7, S + 4])


def test_three_d_positions_on_a_one_d_llm_are_refused():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llm = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=64, vocab_size=50, eos_token_id=1))
    vst = VisualSummarizationTokens(window=8, ratio=4, ratios=(4,))
    vst.bind(llm, None)
    visual = [(torch.randn(1, 4, 32), torch.ones(1, 4), torch.zeros(3, 1, 4, dtype=torch.long))]
    with pytest.raises(TypeError, match="carry 3-D positions but Qwen2RotaryEmbedding is a 1-D rotary"):
        vst.prefill(llm, torch.randn(1, 2, 32), torch.ones(1, 2), visual)
