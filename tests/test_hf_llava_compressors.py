"""The training-free compressors (and vst) on LLaVA-OneVision's FrameTokens, composed as the pipeline
will run them: encode → compressor on "encoder" or "projected" features → project → visual_span.

Tiny model: 5 x 5 SigLIP patches per frame, pooled by the model to 3 x 3 = 9 LLM tokens, one newline
after the video; 4 frames → 4 x 9 + 1 = 37 visual entries with no compressor.
"""

from __future__ import annotations

import pytest
import torch
from hf_tiny import random_frames, save_tiny_llava_onevision, vlc_logits

from vlc.backbone.hf import build_backbone
from vlc.compressors import build_compressor

CONFIGS = {
    "none": {"_target_": "vlc.compressors.none.Identity"},
    "pool": {"_target_": "vlc.compressors.pool.SpatialPool", "stride": 2},
    "diffp": {"_target_": "vlc.compressors.diffp.DifferentialFramePruning", "_partial_": True},
    "keyframe": {"_target_": "vlc.compressors.keyframe.KeyframeSelection", "_partial_": True},
    "budget": {"_target_": "vlc.compressors.budget.TokenBudget", "_partial_": True, "max_tokens": 40},
    "moviechat": {"_target_": "vlc.compressors.moviechat.MovieChatMemory", "_partial_": True,
                  "short_len": 2, "merge_to": 1},
}


@pytest.fixture(scope="module")
def ov(tmp_path_factory):
    path = save_tiny_llava_onevision(tmp_path_factory.mktemp("llava_ov_c"))
    return build_backbone("llava_onevision", str(path), dtype="float32", attn_implementation="sdpa")


def video() -> torch.Tensor:
    """(1, 4, 3, 16, 16) uint8, at the processor's size so pixels reach the tower unresized:
    frames A, A', B, B' where each primed frame differs from the one before only in the 3 x 3 px
    under patch (0, 0) (top-left token of the 5 x 5 grid, and of the pooled 3 x 3 grid)."""
    a, b = random_frames(1, 1, size=16, seed=1)[0, 0], random_frames(1, 1, size=16, seed=2)[0, 0]
    a2, b2 = a.clone(), b.clone()
    a2[:, :3, :3], b2[:, :3, :3] = 255 - a[:, :3, :3], 255 - b[:, :3, :3]
    return torch.stack([a, a2, b, b2])[None]


def span_length(ov, name: str, sits: str, **override) -> tuple[int, object]:
    dim = ov.vision_dim if sits == "encoder" else ov.hidden_size
    compressor = build_compressor({**CONFIGS[name], **override}, dim=dim, pixel_std=ov.pixel_std)
    frames = video()
    ft, pixels = ov.encode(frames, torch.ones(1, 4, dtype=torch.bool), torch.arange(4.0)[None])
    if sits == "encoder":
        ft = ov.project(compressor(ft, pixels=pixels))
    else:
        ft = compressor(ov.project(ft), pixels=pixels)
    span = ov.visual_span(ft)
    assert span.embeds.shape[-1] == ov.hidden_size
    return int(span.mask.sum()), compressor


# (compressor, where it sits) → visual entries reaching the LLM, newline included.
EXPECTED = {
    ("none", "encoder"): 37,
    ("pool", "encoder"): 17,       # 5x5 → 3x3 by the compressor, → 2x2 by the model: 4 x 4 + 1
    ("pool", "projected"): 17,     # 3x3 → 2x2
    ("diffp", "encoder"): 21,      # A and B (new everywhere) whole, A' and B' their changed corner: 9+1+9+1 + 1
    ("diffp", "projected"): 21,
    ("keyframe", "encoder"): 19,   # A and B are keyframes (cos 0.57 < 0.93), the primed frames are not
    ("keyframe", "projected"): 19,
    ("budget", "encoder"): 17,     # 4 x 25 > 40 → stride 2: 4 x 9 = 36 encoder tokens, 4 x 4 after the model's pool
    ("budget", "projected"): 37,   # 4 x 9 = 36 LLM tokens already fit 40
    ("moviechat", "encoder"): 19,  # buffers of 2 frames merged to 1: 2 frames
    ("moviechat", "projected"): 19,
}


@pytest.mark.parametrize("name,sits", list(EXPECTED))
@torch.no_grad()
def test_token_counts_on_llava_onevision(ov, name, sits):
    count, compressor = span_length(ov, name, sits)
    assert count == EXPECTED[name, sits]
    if name == "budget":
        assert compressor.last_strides == [2 if sits == "encoder" else 1]


@torch.no_grad()
def test_diffp_keeps_the_changed_corner_and_the_first_frame(ov):
    """diffp on the 5 x 5 SigLIP grid keeps the first frame, B (new everywhere) and the one changed
    patch of A' and B'; the model's pool then keeps the one pooled cell that patch falls in."""
    compressor = build_compressor(CONFIGS["diffp"], dim=ov.vision_dim, pixel_std=ov.pixel_std)
    ft, pixels = ov.encode(video(), torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4))
    kept = compressor(ft, pixels=pixels).token_mask[0]
    assert kept.sum(-1).tolist() == [25, 1, 25, 1]
    assert kept[1].nonzero().flatten().tolist() == [0] == kept[3].nonzero().flatten().tolist()
    assert ov.project(compressor(ft, pixels=pixels)).token_mask[0].sum(-1).tolist() == [9, 1, 9, 1]


@torch.no_grad()
def test_vst_on_llava_onevision_prefill_equals_full_forward_and_compresses(ov):
    """vst's beacons start from the pretrained Qwen2's q/k/v; uncompressed windowed prefill equals
    one full forward, and compressed it keeps sink + beacons only."""
    from vlc.compressors.vst import VisualSummarizationTokens

    frames = video()
    full, span, _ = vlc_logits(ov, frames, "Which color?", "red")
    prefix = torch.tensor(ov.prompt.prefix_ids())[None]
    text = ov.prompt.training_batch(["Which color?"], [None], ["red"]).ids
    sink = ov.embed(prefix)

    vst = VisualSummarizationTokens(window=16, ratio=4, compress=False).eval()
    vst.attach(ov.llm, ov.tokenizer)
    assert torch.equal(vst.beacon_q[0].weight, ov.llm.model.layers[0].self_attn.q_proj.weight)
    ctx = vst.prefill(ov.llm, sink, torch.ones_like(prefix), [(span.embeds, span.mask)])
    L = ctx.length
    positions = ctx.next_position[:, None] + torch.arange(text.shape[1])[None]
    out = ov.llm(inputs_embeds=ov.embed(text), past_key_values=ctx.cache, position_ids=positions,
                 attention_mask=torch.cat([ctx.attention_mask, torch.ones_like(text)], 1))
    assert L == prefix.shape[1] + 37
    assert (out.logits - full[:, L:]).abs().max().item() <= 1e-4

    vst.compress = True
    ctx = vst.prefill(ov.llm, sink, torch.ones_like(prefix), [(span.embeds, span.mask)])
    # 37 entries in windows of 16 at ratio 4: 16 → 4 beacons, 16 → 4, the last 5 → 2.
    assert vst.last_windows == [(16, 4, 4), (16, 4, 4), (5, 4, 2)]
    assert ctx.length == prefix.shape[1] + 10
