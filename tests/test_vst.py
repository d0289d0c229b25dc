"""`compressor=vst`: Video-XL beacon compression inside the LLM, pinned on tiny random models.

Every continuation here goes through the model's ordinary HF forward on the returned Context,
exactly as the training/generation code runs the question and the answer.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from vlc.compressors import vst as vst_module
from vlc.compressors.vst import VisualSummarizationTokens
from vlc.tokens import FrameTokens, iter_cache_layers

D = 64
EOS = 2
SMALL = dict(
    hidden_size=D,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=300,
    eos_token_id=EOS,
)
CONFIGS = {"qwen2": Qwen2Config, "llama": LlamaConfig, "mistral": MistralConfig}


class Tokenizer:  # bind() only reads eos_token_id
    eos_token_id = EOS


def tiny_llm(kind: str = "qwen2"):
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(CONFIGS[kind](**SMALL)).eval()
    if kind == "qwen2":  # random-init biases are zero; make them count so the bias copy is tested
        with torch.no_grad():
            for layer in llm.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
    return llm


def make_vst(llm, **kw) -> VisualSummarizationTokens:
    kw.setdefault("ratios", (2, 4))
    vst = VisualSummarizationTokens(**kw).eval()
    vst.bind(llm, Tokenizer())
    return vst


def chunks(vis, mask=None, size=None):
    """(B, N, D) → list of (embeds, mask) chunks of ``size`` tokens (one chunk when size is None)."""
    B, N, _ = vis.shape
    mask = torch.ones(B, N, dtype=torch.bool) if mask is None else mask
    size = size or N
    return [(vis[:, i : i + size], mask[:, i : i + size]) for i in range(0, N, size)]


def continue_text(llm, ctx, text):
    """The lead's continuation call: ordinary HF forward on the Context. text (B, T, D)."""
    B, T, _ = text.shape
    text_mask = torch.ones(B, T, dtype=torch.long)
    return llm(
        inputs_embeds=text,
        attention_mask=torch.cat([ctx.attention_mask, text_mask], 1),
        position_ids=ctx.next_position[:, None] + torch.arange(T),
        past_key_values=ctx.cache,
        use_cache=True,
    ).logits  # (B, T, V)


def cache_kv(ctx):
    return [(k.clone(), v.clone()) for k, v in iter_cache_layers(ctx.cache)]


def expected_windows(n: int, window: int, ratio: int) -> list[tuple[int, int]]:
    """Independent count of (raw tokens, beacons) per window: full windows compress whole beacon
    groups and carry the rest; the last window gets ceil(rest / ratio) beacons."""
    out, left = [], n
    while left >= window:
        raw = window - window % ratio
        out.append((raw, raw // ratio))
        left -= raw
    if left:
        out.append((left, math.ceil(left / ratio)))
    return out


def test_forward_is_identity():
    llm = tiny_llm()
    x = FrameTokens(torch.randn(1, 2, 4, 8), torch.ones(1, 2, 4, dtype=torch.bool), torch.zeros(1, 2), (2, 2))
    assert make_vst(llm)(x) is x


@pytest.mark.parametrize("kind", ["qwen2", "llama", "mistral"])
def test_no_compression_equals_full_forward(kind):
    llm = tiny_llm(kind)
    vst = make_vst(llm, window=8, ratio=4, compress=False)
    torch.manual_seed(1)
    B, S, N, T = 2, 3, 21, 4
    sink, vis, text = torch.randn(B, S, D), torch.randn(B, N, D), torch.randn(B, T, D)
    with torch.no_grad():
        ctx = vst.prefill(llm, sink, torch.ones(B, S, dtype=torch.long), chunks(vis, size=5))
        got = continue_text(llm, ctx, text)
        ref = llm(inputs_embeds=torch.cat([sink, vis, text], 1)).logits[:, -T:]
    assert ctx.length == S + N and ctx.next_position.tolist() == [S + N] * B
    assert [w[0] for w in vst.last_windows] == [8, 8, 5]  # three windows really ran
    assert (got[:, -1] - ref[:, -1]).abs().max() < 1e-5
    assert (got - ref).abs().max() < 1e-5


@pytest.mark.parametrize(
    "frames, per_frame, window, ratio",
    [
        (3, 8, 8, 4),  # whole windows, no remainder
        (7, 3, 8, 4),  # 21 tokens: short tail window (5 tokens → 2 beacons)
        (4, 5, 10, 4),  # 10 % 4 = 2 raw tokens carry into the next window
        (5, 5, 16, 8),  # one short window only
        (1, 3, 8, 4),  # fewer raw tokens than the ratio: one beacon
        (16, 9, 24, 12),  # 144 tokens, 24-token windows at ratio 12
    ],
)
def test_cache_holds_sink_and_beacons_only(frames, per_frame, window, ratio):
    llm = tiny_llm()
    vst = make_vst(llm, window=window, ratio=ratio, ratios=(ratio,))
    S, N = 3, frames * per_frame
    vis = torch.randn(1, N, D)
    with torch.no_grad():
        ctx = vst.prefill(llm, torch.randn(1, S, D), torch.ones(1, S), chunks(vis, size=per_frame))
    plan = expected_windows(N, window, ratio)
    beacons = sum(b for _, b in plan)
    assert beacons == math.ceil(N / ratio)
    assert [(raw, b) for raw, _, b in vst.last_windows] == plan
    assert ctx.length == S + beacons
    assert ctx.next_position.tolist() == [S + beacons]
    assert ctx.visual_tokens.tolist() == [N]
    for k, v in iter_cache_layers(ctx.cache):
        assert k.shape == v.shape == (1, 2, S + beacons, D // 4)


def test_max_position_stays_near_sink_plus_beacons_plus_window():
    llm = tiny_llm()
    S, N, window, ratio = 3, 200, 16, 8
    vst = make_vst(llm, window=window, ratio=ratio, ratios=(ratio,))
    with torch.no_grad():
        ctx = vst.prefill(llm, torch.randn(1, S, D), torch.ones(1, S), chunks(torch.randn(1, N, D), size=10))
    beacons = math.ceil(N / ratio)
    assert ctx.length == S + beacons
    # 12 full windows (2 beacons each) and an 8-token tail (1 beacon); the 12th window reaches
    # furthest: memory of S + 22 entries, then 16 raw + 2 beacons at positions 25..42
    assert [w[2] for w in vst.last_windows] == [2] * 12 + [1]
    assert vst.last_max_position == S + 22 + window + 2 - 1 == 42
    assert vst.last_max_position <= S + beacons + window
    assert vst.last_max_position < S + N  # uncompressed positions would reach 202


def test_beacon_parameters_are_copies_at_init():
    llm = tiny_llm("qwen2")
    for p in llm.parameters():
        p.requires_grad_(False)  # a frozen LLM must not freeze the beacons
    vst = make_vst(llm)
    for layer, bq, bk, bv in zip(llm.model.layers, vst.beacon_q, vst.beacon_k, vst.beacon_v):
        for base, copy in ((layer.self_attn.q_proj, bq), (layer.self_attn.k_proj, bk), (layer.self_attn.v_proj, bv)):
            assert torch.equal(base.weight, copy.weight) and torch.equal(base.bias, copy.bias)
            assert copy.weight.data_ptr() != base.weight.data_ptr()  # a copy, not a tie
            assert copy.weight.requires_grad
    assert torch.equal(vst.beacon_embed, llm.get_input_embeddings().weight[EOS])
    names = set(vst.state_dict())
    assert {"beacon_embed", "beacon_q.0.weight", "beacon_q.0.bias", "beacon_v.1.weight"} <= names
    assert len(list(vst.parameters())) == 1 + 3 * 2 * 2  # embed + (q, k, v) x (weight, bias) x layers
    assert not any("beacon" in name for name in llm.state_dict())  # nothing was added to the HF model


def test_llama_beacon_projections_have_no_bias():
    llm = tiny_llm("llama")
    vst = make_vst(llm)
    assert vst.beacon_q[0].bias is None
    assert torch.equal(vst.beacon_k[1].weight, llm.model.layers[1].self_attn.k_proj.weight)


def test_answer_loss_reaches_the_first_of_three_windows():
    llm = tiny_llm()
    vst = make_vst(llm, window=8, ratio=4, ratios=(4,))
    torch.manual_seed(2)
    S, N, T = 3, 24, 5
    vis = torch.randn(1, N, D, requires_grad=True)
    ctx = vst.prefill(llm, torch.randn(1, S, D), torch.ones(1, S), chunks(vis, size=6))
    assert len(vst.last_windows) == 3
    logits = continue_text(llm, ctx, torch.randn(1, T, D))
    labels = torch.randint(0, 300, (1, T))
    F.cross_entropy(logits[0], labels[0]).backward()
    # window 1's raw KV is gone: its tokens reach the answer only through their beacons' KV
    assert vis.grad[:, :8].abs().sum() > 0
    for p in (vst.beacon_embed, vst.beacon_q[0].weight, vst.beacon_k[0].weight, vst.beacon_v[1].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_gradients_cross_windows_through_beacon_kv():
    # 3 layers: a beacon's layer-0 KV depends on its embedding only, so window 1 reaches window 3's
    # last-layer KV through the layer-1 beacon KV in memory
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(Qwen2Config(**{**SMALL, "num_hidden_layers": 3})).eval()
    vst = make_vst(llm, window=8, ratio=4, ratios=(4,))
    vis = torch.randn(1, 24, D, requires_grad=True)
    ctx = vst.prefill(llm, torch.randn(1, 3, D), torch.ones(1, 3), chunks(vis))
    last_keys, last_values = list(iter_cache_layers(ctx.cache))[-1]
    # the third window's 2 beacons only see window 1 through its beacons' KV in memory (no detach)
    (last_keys[:, :, -2:].sum() + last_values[:, :, -2:].sum()).backward()
    assert vis.grad[:, :8].abs().sum() > 0
    assert vis.grad[:, 16:].abs().sum() > 0


def test_training_draws_ratios_reproducibly_and_eval_uses_ratio():
    llm = tiny_llm()
    ratios = (2, 4, 8, 12, 16)
    vst = make_vst(llm, window=48, ratio=16, ratios=ratios)
    S, N = 3, 48 * 8 + 10
    sink, vis = torch.randn(1, S, D), torch.randn(1, N, D)

    def run():
        with torch.no_grad():
            ctx = vst.prefill(llm, sink, torch.ones(1, S), chunks(vis, size=12))
        return ctx, list(vst.last_windows)

    vst.train()
    torch.manual_seed(123)
    ctx_a, windows_a = run()
    torch.manual_seed(123)
    ctx_b, windows_b = run()
    assert windows_a == windows_b
    drawn = [r for _, r, _ in windows_a]
    assert set(drawn) <= set(ratios) and len(set(drawn)) > 1
    for k, (raw, r, b) in enumerate(windows_a):  # every window obeys its own ratio
        last = k == len(windows_a) - 1
        assert b == (math.ceil(raw / r) if last else raw // r)
        assert last or raw == 48 - 48 % r
    assert sum(raw for raw, _, _ in windows_a) == N
    assert ctx_a.length == S + sum(b for _, _, b in windows_a)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(cache_kv(ctx_a), cache_kv(ctx_b)))

    vst.eval()
    ctx_c, windows_c = run()
    assert {r for _, r, _ in windows_c} == {16}
    assert ctx_c.length == S + math.ceil(N / 16)


def test_streaming_generator_matches_one_chunk_and_is_lazy():
    llm = tiny_llm()
    window, ratio, per_frame, frames = 12, 4, 5, 9  # 45 tokens; frames straddle window borders
    vst = make_vst(llm, window=window, ratio=ratio, ratios=(ratio,))
    B, S = 2, 3
    sink, vis = torch.randn(B, S, D), torch.randn(B, frames * per_frame, D)
    ones = torch.ones(B, S, dtype=torch.long)
    consumed = []

    def frames_on_demand():  # what an encoder that runs frame by frame would yield
        for f in range(frames):
            # windows run as soon as enough frames have arrived, before the next is encoded
            full_windows = f * per_frame // window  # window is a multiple of ratio: nothing carries
            assert len(vst.last_windows) == full_windows
            consumed.append(f)
            part = vis[:, f * per_frame : (f + 1) * per_frame]
            yield part, torch.ones(B, per_frame, dtype=torch.bool)

    with torch.no_grad():
        streamed = vst.prefill(llm, sink, ones, frames_on_demand())
        whole = vst.prefill(llm, sink, ones, chunks(vis))
    assert consumed == list(range(frames))
    assert streamed.length == whole.length == S + math.ceil(45 / ratio)
    for (ks, vs), (kw, vw) in zip(cache_kv(streamed), cache_kv(whole)):
        assert torch.allclose(ks, kw, atol=1e-6, rtol=0) and torch.allclose(vs, vw, atol=1e-6, rtol=0)
    assert torch.equal(streamed.attention_mask, whole.attention_mask)
    assert torch.equal(streamed.next_position, whole.next_position)


@pytest.mark.parametrize("kind", ["qwen2", "llama", "mistral"])
def test_batch_with_different_lengths_matches_single_samples(kind):
    llm = tiny_llm(kind)
    vst = make_vst(llm, window=8, ratio=4, ratios=(4,))
    torch.manual_seed(3)
    S, N, T = 4, 30, 3
    sink, vis, text = torch.randn(2, S, D), torch.randn(2, N, D), torch.randn(2, T, D)
    sink_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)  # sample 0: left-padded prefix
    vis_mask = torch.ones(2, N, dtype=torch.bool)
    vis_mask[0, 17:] = False  # sample 0: 17 visual tokens, sample 1: 30
    with torch.no_grad():
        ctx = vst.prefill(llm, sink, sink_mask, chunks(vis, vis_mask, size=6))
        batched = continue_text(llm, ctx, text)
        singles = []
        for b in range(2):
            one = vst.prefill(llm, sink[b : b + 1, sink_mask[b]], torch.ones(1, int(sink_mask[b].sum())),
                              chunks(vis[b : b + 1, vis_mask[b]], size=6))
            singles.append((one, continue_text(llm, one, text[b : b + 1])))
    lengths = [3 + math.ceil(17 / 4), 4 + math.ceil(30 / 4)]
    assert ctx.next_position.tolist() == lengths and ctx.length == max(lengths)
    assert ctx.attention_mask.sum(1).tolist() == lengths
    assert ctx.attention_mask[0, : max(lengths) - lengths[0]].eq(0).all()  # left padding
    assert ctx.visual_tokens.tolist() == [17, 30]
    for b, (one, logits) in enumerate(singles):
        assert (batched[b] - logits[0]).abs().max() < 1e-5


def test_batched_lockstep_matches_single_samples():
    llm = tiny_llm()
    vst = make_vst(llm, window=8, ratio=4, ratios=(4,))
    sink, vis = torch.randn(2, 3, D), torch.randn(2, 20, D)
    with torch.no_grad():
        both = cache_kv(vst.prefill(llm, sink, torch.ones(2, 3), chunks(vis, size=5)))
        for b in range(2):
            one = cache_kv(vst.prefill(llm, sink[b : b + 1], torch.ones(1, 3), chunks(vis[b : b + 1], size=5)))
            for (kb, vb), (k1, v1) in zip(both, one):
                assert torch.allclose(kb[b], k1[0], atol=1e-6) and torch.allclose(vb[b], v1[0], atol=1e-6)


def test_activation_checkpointing_gives_the_same_gradients(monkeypatch):
    calls = []
    real = vst_module.checkpoint
    monkeypatch.setattr(vst_module, "checkpoint", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    grads = []
    for checkpointing in (False, True):
        llm = tiny_llm()
        if checkpointing:
            llm.activation_checkpointing_enable()
        vst = make_vst(llm, window=8, ratio=4, ratios=(4,)).train()
        torch.manual_seed(4)
        vis = torch.randn(1, 20, D, requires_grad=True)
        ctx = vst.prefill(llm, torch.randn(1, 3, D), torch.ones(1, 3), chunks(vis, size=4))
        continue_text(llm, ctx, torch.randn(1, 2, D)).square().mean().backward()
        grads.append((vis.grad, vst.beacon_k[0].weight.grad))
    assert len(calls) == 2 * (1 + 3)  # layers x (sink + 3 windows), only in the checkpointed run
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # raised inside peft
def test_lora_wrapped_projections_are_copied_from_their_base():
    peft = pytest.importorskip("peft")
    llm = peft.get_peft_model(tiny_llm("llama"), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    vst = make_vst(llm, window=8, ratio=4, ratios=(4,))
    base = llm.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(vst.beacon_q[0], torch.nn.Linear) and torch.equal(vst.beacon_q[0].weight, base.weight)
    with torch.no_grad():
        ctx = vst.prefill(llm, torch.randn(1, 3, D), torch.ones(1, 3), chunks(torch.randn(1, 10, D)))
    assert ctx.length == 3 + 3


def test_config_builds_the_paper_defaults():
    from omegaconf import OmegaConf

    from vlc.compressors import build_compressor
    from vlc.run import CONFIG_DIR

    vst = build_compressor(OmegaConf.load(CONFIG_DIR / "compressor" / "vst.yaml"), dim=32)
    assert isinstance(vst, VisualSummarizationTokens)
    assert (vst.window, vst.ratio, vst.ratios, vst.streaming, vst.compress) == (1440, 16, (2, 4, 8, 12, 16), True, True)


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="ratios"):
        VisualSummarizationTokens(window=8, ratio=4, ratios=(2, 16))
    llm = tiny_llm()
    with pytest.raises(RuntimeError, match=r"call bind\(llm, tokenizer\) first"):
        vst = VisualSummarizationTokens(window=8, ratio=4, ratios=(4,))
        vst.prefill(llm, torch.randn(1, 2, D), torch.ones(1, 2), [])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(vst_module.flash_attn_func is None, reason="flash-attn not installed")
def test_flash_attention_matches_sdpa():
    llm = tiny_llm().cuda().to(torch.bfloat16)
    sink = torch.randn(2, 5, D, device="cuda", dtype=torch.bfloat16)
    vis = torch.randn(2, 70, D, device="cuda", dtype=torch.bfloat16)
    out = {}
    for attention in ("sdpa", "flash"):
        vst = make_vst(llm, window=16, ratio=4, ratios=(4,), attention=attention)
        with torch.no_grad():
            out[attention] = cache_kv(vst.prefill(llm, sink, torch.ones(2, 5, device="cuda"), chunks(vis, size=10)))
    for (ks, vs), (kf, vf) in zip(out["sdpa"], out["flash"]):
        assert torch.allclose(ks.float(), kf.float(), atol=3e-2) and torch.allclose(vs.float(), vf.float(), atol=3e-2)


def test_compression_start_recopies_beacons_from_the_trained_llm_in_place():
    """After an uncompressed phase the LLM has trained on; the beacons are re-copied from it, into
    the same tensors (the optimizer holds them), and the cache then holds beacons only."""
    llm = tiny_llm()
    vst = make_vst(llm, window=8, ratio=4, ratios=(4,))
    params_before = [p.data_ptr() for p in vst.parameters()]
    with torch.no_grad():
        for p in llm.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert not torch.equal(vst.beacon_q[0].weight, llm.model.layers[0].self_attn.q_proj.weight)
    vst.on_compression_start(llm, Tokenizer())
    for layer, bq, bk, bv in zip(llm.model.layers, vst.beacon_q, vst.beacon_k, vst.beacon_v):
        for base, copy in ((layer.self_attn.q_proj, bq), (layer.self_attn.k_proj, bk), (layer.self_attn.v_proj, bv)):
            assert torch.equal(base.weight, copy.weight) and torch.equal(base.bias, copy.bias)
            assert copy.weight.data_ptr() != base.weight.data_ptr()
    assert torch.equal(vst.beacon_embed, llm.get_input_embeddings().weight[EOS])
    assert [p.data_ptr() for p in vst.parameters()] == params_before
    S, N = 2, 16
    with torch.no_grad():
        ctx = vst.prefill(llm, torch.randn(1, S, D), torch.ones(1, S), chunks(torch.randn(1, N, D)))
    assert ctx.length == S + N // 4
