"""The training-free compressors (and vst) on LLaVA-OneVision, through vlc's ``VideoPipeline``:
encode → the compressor where it sits ("encoder": SigLIP's grid; "projected": after the model's own
projector and pool) → project → visual span → prefill.

Tiny model: 5 x 5 SigLIP patches per frame, pooled by the model to 3 x 3 = 9 LLM tokens, one newline
after the video; 4 frames → 4 x 9 + 1 = 37 visual entries with no compressor. Every built-in
compressor declares ``sits = "encoder"``; the "projected" rows run the same classes declared there.
"""

from __future__ import annotations

import pytest
import torch
from hf_tiny import answer_logits, pipeline_logits, random_frames, save_tiny_llava_onevision, video_batch

from vlc.backbone.hf import build_backbone
from vlc.compressors.base import build_compressor, compressor_class
from vlc.compressors.budget import TokenBudget
from vlc.compressors.diffp import DifferentialFramePruning
from vlc.compressors.keyframe import KeyframeSelection
from vlc.compressors.moviechat import MovieChatMemory
from vlc.compressors.pool import SpatialPool
from vlc.model.pipeline import VideoPipeline

CONFIGS = {
    "none": {"_target_": "vlc.compressors.none.Identity"},
    "pool": {"_target_": "vlc.compressors.pool.SpatialPool", "stride": 2},
    "diffp": {"_target_": "vlc.compressors.diffp.DifferentialFramePruning"},
    "keyframe": {"_target_": "vlc.compressors.keyframe.KeyframeSelection"},
    "budget": {"_target_": "vlc.compressors.budget.TokenBudget", "max_tokens": 40},
    "moviechat": {"_target_": "vlc.compressors.moviechat.MovieChatMemory", "short_len": 2, "merge_to": 1},
}


class PoolOnProjected(SpatialPool):
    sits = "projected"


class DiffpOnProjected(DifferentialFramePruning):
    sits = "projected"


class KeyframeOnProjected(KeyframeSelection):
    sits = "projected"


class BudgetOnProjected(TokenBudget):
    sits = "projected"


class MovieChatOnProjected(MovieChatMemory):
    sits = "projected"


ON_PROJECTED = {"pool": PoolOnProjected, "diffp": DiffpOnProjected, "keyframe": KeyframeOnProjected,
                "budget": BudgetOnProjected, "moviechat": MovieChatOnProjected}


def build(ov, name: str, sits: str):
    """The compressor as the model builds it: ``dim`` is the width where it sits."""
    cfg = dict(CONFIGS[name])
    if sits == "projected":
        cfg["_target_"] = f"{__name__}.{ON_PROJECTED[name].__qualname__}"
    assert compressor_class(cfg["_target_"]).sits == sits
    dim = ov.hidden_size if sits == "projected" else ov.vision_dim
    made = build_compressor(cfg, dim=dim, out_dim=ov.hidden_size, pixel_std=ov.pixel_std)
    made.bind(ov.llm, ov.tokenizer)
    return made.eval()


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


def visual_entries(ov, compressor) -> tuple[int, int]:
    """(entries of the context after the prefix, the pipeline's count of visual tokens)."""
    ctx = VideoPipeline(ov, compressor).encode_context(video_batch(video(), "Which color?", "red"))
    return ctx.length - len(ov.prompt.prefix_ids()), int(ctx.visual_tokens)


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
    compressor = build(ov, name, sits)
    entries, tokens = visual_entries(ov, compressor)
    assert (entries, tokens) == (EXPECTED[name, sits], EXPECTED[name, sits] - 1)  # the newline is layout
    if name == "budget":
        assert compressor.report()["pool_stride"] == [2.0 if sits == "encoder" else 1.0]


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
    """vst's beacons start from the pretrained Qwen2's q/k/v. Streamed a frame at a time (its window
    is under one frame of encoder tokens), the newline still comes once, after the last frame:
    uncompressed, the windowed prefill gives the full forward's answer logits; compressed, the
    context keeps the prefix and the beacons only."""
    vst = build_compressor({"_target_": "vlc.compressors.vst.VisualSummarizationTokens", "window": 16,
                            "ratio": 4, "compress": False})
    vst.bind(ov.llm, ov.tokenizer)
    vst.eval()
    assert torch.equal(vst.beacon_q[0].weight, ov.llm.model.layers[0].self_attn.q_proj.weight)
    assert vst.streaming and vst.chunk_frames(ov.tokens_per_frame) == 1
    frames, prefix = video(), len(ov.prompt.prefix_ids())
    full, full_length, _ = pipeline_logits(ov, frames, "Which color?", "red")
    ours, length, _ = answer_logits(VideoPipeline(ov, vst), frames, "Which color?", "red")
    assert length == full_length == prefix + 37
    assert (ours - full).abs().max().item() <= 1e-4

    vst.compress = True
    _, length, _ = answer_logits(VideoPipeline(ov, vst), frames, "Which color?", "red")
    # 37 entries (4 frames of 9, then the newline) in windows of 16 at ratio 4: 4 + 4 + 2 beacons.
    assert vst.last_windows == [(16, 4, 4), (16, 4, 4), (5, 4, 2)]
    assert length == prefix + 10


@torch.no_grad()
def test_stc_in_place_of_the_projector_on_llava_onevision(ov):
    """compressor=stc_projector replaces the model's MLP and its 2x2 pool (it trains from random
    init); the model's newline still closes the video. 4 frames of 5x5 → Conv3d k=s=2, padding 1 →
    3 frames of 3x3 at LLM width."""
    stc = build_compressor({"_target_": "vlc.compressors.stc.STCProjector", "depth": 1}, dim=ov.vision_dim,
                           out_dim=ov.hidden_size)
    stc.bind(ov.llm, ov.tokenizer)
    assert stc.sits == "projector"
    assert visual_entries(ov, stc.eval()) == (3 * 9 + 1, 3 * 9)
