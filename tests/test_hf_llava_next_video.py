"""LLaVA-NeXT-Video as a vlc Backbone: a tiny random LlavaNextVideoForConditionalGeneration (CLIP +
Llama, a tokenizer that prepends <s> as Llama's does) saved to a folder, loaded through
``build_backbone``, run through vlc's ``VideoPipeline`` and compared with the model's own forward."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import hf_logits, pipeline_logits, random_frames, save_tiny_llava_next_video

from vlc.backbone.hf import build_backbone
from vlc.compressors import build_compressor


@pytest.fixture(scope="module")
def nv(tmp_path_factory):
    path = save_tiny_llava_next_video(tmp_path_factory.mktemp("llava_next_video"))
    return build_backbone("llava_next_video", str(path), dtype="float32", attn_implementation="sdpa")


@torch.no_grad()
def test_logits_equal_the_models_own_forward(nv):
    frames = random_frames(1, 3, size=30)  # shortest side → 24, centre crop 24 x 24
    ours, context_length, text_ids = pipeline_logits(nv, frames, "What color is the shape?", "red")
    ref, ref_ids = hf_logits(nv, frames, "What color is the shape?", "red")
    prefix = nv.prompt.prefix_ids()
    assert context_length - len(prefix) == 27 == int((ref_ids == nv.video_token_id).sum())  # 3 x 9, no newline
    assert ref_ids[0, : len(prefix)].tolist() == prefix and prefix[0] == nv.tokenizer.bos_token_id  # <s>
    assert torch.equal(text_ids[0], ref_ids[0, len(prefix) + 27 :])
    assert (ours - ref[:, -text_ids.shape[1] :]).abs().max().item() <= 1e-4


def test_layout_prompt_and_parts(nv):
    assert nv.grid == (6, 6) and nv.tokens_per_frame == 36 and nv.llm_tokens_per_frame == 9
    assert nv.vision_dim == 32 and nv.hidden_size == 64 and type(nv.llm).__name__ == "LlamaForCausalLM"
    assert nv.prompt_template == {"prefix": "<s>USER: ", "question": "\n{question}{options} ASSISTANT:",
                                  "answer": " {answer} "}
    hf = nv.hf_model
    assert nv.projector.resampler is hf.model.vision_resampler and nv.encoder is hf.model.vision_tower
    assert {id(p) for p in nv.parameters()} == {id(p) for p in hf.parameters()}


def test_real_geometry_144_tokens_per_frame():
    """LLaVA-NeXT-Video-7B's numbers from its config's geometry: CLIP-L/14 at 336 px → 24 x 24 = 576
    patches (CLS dropped), average-pooled by 2 → 12 x 12 = 144 tokens per frame."""
    from transformers import LlavaNextVideoConfig

    from vlc.backbone.hf.llava_next_video import LlavaNextVideoBackbone

    config = LlavaNextVideoConfig()
    side = config.vision_config.image_size // config.vision_config.patch_size
    shell = LlavaNextVideoBackbone.__new__(LlavaNextVideoBackbone)
    shell.pool_stride = config.spatial_pool_stride
    assert (side, shell.pooled_grid((side, side))) == (24, (12, 12))
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")


@pytest.mark.parametrize("cfg,sits,expected", [
    ({"_target_": "vlc.compressors.pool.SpatialPool", "stride": 2}, "encoder", 3),   # 6x6 → 3x3 → model pool 1x1
    ({"_target_": "vlc.compressors.pool.SpatialPool", "stride": 2}, "projected", 12),  # 3x3 → 2x2 (ceil)
    ({"_target_": "vlc.compressors.budget.TokenBudget", "_partial_": True, "max_tokens": 20}, "projected", 12),
    ({"_target_": "vlc.compressors.keyframe.KeyframeSelection", "_partial_": True, "threshold": -1.0}, "encoder", 9),
])
@torch.no_grad()
def test_compressors_on_llava_next_video(nv, cfg, sits, expected):
    dim = nv.vision_dim if sits == "encoder" else nv.hidden_size
    compressor = build_compressor(cfg, dim=dim, pixel_std=nv.pixel_std)
    ft, pixels = nv.encode(random_frames(1, 3, size=24), torch.ones(1, 3, dtype=torch.bool), torch.arange(3.0)[None])
    ft = nv.project(compressor(ft, pixels=pixels)) if sits == "encoder" else compressor(nv.project(ft), pixels=pixels)
    assert int(nv.visual_span(ft).mask.sum()) == expected
