"""Qwen2.5-VL through build_backbone: with no compressor vlc's logits equal the HF model's own forward
on the same frames and text; the 3-D M-RoPE positions of kept, pruned and pooled tokens; token counts.

The tiny checkpoint (tests/hf_tiny_qwen.py): 14 px patches, temporal patch 2, 2×2 merge,
tokens_per_second 2. Frames of 56 × 112 px → 4 × 8 patches per temporal group → 2 × 4 = 8 tokens.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.modeling_layers import GradientCheckpointingLayer

from hf_tiny_qwen import batch_of, frames_at, hf_inputs, placed, tiny_qwen2_5_vl, videollm_from_config, vlc_forward
from vlc.backbone.hf import FAMILIES, build_backbone
from vlc.compressors.diffp import DifferentialFramePruning
from vlc.compressors.pool import SpatialPool
from vlc.compressors.stc import STCProjector
from vlc.run import CONFIG_DIR

QUESTION, ANSWER = "What color is the shape?", "red"
TIMES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]  # 2 fps: four temporal groups, one second each


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen2_5_vl"))


@pytest.fixture(scope="module")
def hf(checkpoint):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval()


def load(checkpoint, **options):
    return build_backbone("qwen2_5_vl", str(checkpoint), dtype="float32", attn_implementation="sdpa", **options).eval()


def release_positions(model, inputs):
    """The positions Qwen2.5-VL's release computes: HF's own for the prompt up to the video, text after
    it one past the video's largest position (transformers 5.x continues at start + max(h, w) instead)."""
    pos, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                         video_grid_thw=inputs["video_grid_thw"],
                                         second_per_grid_ts=inputs["second_per_grid_ts"])
    video = (inputs["mm_token_type_ids"][0] == 2).nonzero()[:, 0]
    after = int(video[-1]) + 1
    start = int(pos[:, 0, video].max()) + 1
    pos[:, 0, after:] = start + torch.arange(pos.shape[2] - after)
    return pos


def test_no_compressor_equals_the_hf_forward(checkpoint, hf):
    """8 frames at 4 fps (τ 0, 1, 2, 3 ≤ the grid's 4 columns, so transformers' own positions agree with
    the release's): vlc's logits for the question and answer equal the HF model's own forward on its
    chat template and processor (max |Δ| 0.0 measured in fp32), 8 tokens per temporal group as the
    processor counts them; the prompt cut from the template puts <|vision_start|> in the prefix and
    <|vision_end|> in the question."""
    model = hf
    backbone = load(checkpoint)
    times = [i / 4 for i in range(8)]
    frames = frames_at(times, 56, 112)
    with torch.no_grad():
        logits, ft, span, before, after = vlc_forward(backbone, frames, times, QUESTION, ANSWER)
        inputs = hf_inputs(backbone, frames, times, 4.0, QUESTION, ANSWER)
        ref = model(**inputs).logits
    assert ft.tokens.shape == (1, 4, 8, 64) and ft.grid == (2, 4)
    assert int(inputs["video_grid_thw"].prod()) // 4 // 4 == 8  # HF: tokens per temporal group
    ids = inputs["input_ids"][0].tolist()
    assert ids[: len(before)] == before and ids[-len(after):] == after
    assert backbone.prompt.prefix.endswith("<|vision_start|>") and backbone.prompt.question.startswith("<|vision_end|>")
    assert ref.shape == (1, len(before) + 32 + len(after), 516) and logits.shape == (1, len(after), 516)
    assert (logits - ref[:, -len(after):]).abs().max() <= 1e-4
    assert span.positions[:, 0, -1].tolist() == [3, 1, 3]  # the last token; <|vision_end|> at 1 + 3 either way


@pytest.mark.parametrize("fps, taus", [(1.0, [0, 4, 8, 12]), (2.0, [0, 2, 4, 6]), (4.0, [0, 1, 2, 3])])
def test_release_positions_equal_hf_given_those_positions(checkpoint, hf, fps, taus):
    """Qwen2.5-VL's release numbering: τ = g · 2/fps · 2, text one past the video's largest position.
    vlc equals the HF forward given those position_ids at every frame rate; where the last group's τ
    exceeds the grid, transformers 5.x's own numbering (text at 1 + max(2, 4)) gives other logits."""
    model = hf
    backbone = load(checkpoint)
    times = [i / fps for i in range(8)]
    frames = frames_at(times, 56, 112)
    with torch.no_grad():
        logits, _, span, _, after = vlc_forward(backbone, frames, times, QUESTION, ANSWER)
        inputs = hf_inputs(backbone, frames, times, fps, QUESTION, ANSWER)
        ref = model(**inputs, position_ids=release_positions(model, inputs)).logits[:, -len(after):]
        own = model(**inputs).logits[:, -len(after):]
    assert (logits - ref).abs().max() <= 1e-4
    assert ((logits - own).abs().max() > 1e-3) == (taus[-1] > 3)
    pos = span.positions[:, 0]  # relative to the first token, right after <|vision_start|>
    assert pos[0, ::8].tolist() == taus and pos.shape == (3, 32)
    assert pos[1, :8].tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and pos[2, :8].tolist() == [0, 1, 2, 3] * 2


def test_odd_frame_count_repeats_the_last_frame_as_the_processor_does(checkpoint, hf):
    model = hf
    backbone = load(checkpoint)
    times = [0.0, 0.5, 1.0]
    frames = frames_at(times, 56, 112, seed=3)
    with torch.no_grad():
        logits, ft, _, _, after = vlc_forward(backbone, frames, times, QUESTION, ANSWER)
        ref = model(**hf_inputs(backbone, frames, times, 2.0, QUESTION, ANSWER)).logits
    assert ft.tokens.shape[:3] == (1, 2, 8) and ft.times.tolist() == [[0.0, 1.0]]
    assert (logits - ref[:, -len(after):]).abs().max() <= 1e-4


def test_encode_layout_counts_and_batch_padding(checkpoint):
    """Pre-merge patches per temporal group on grid (4, 8); a shorter sample's missing groups are
    masked, its real groups equal its own encode; group pixels are the pair's mean at 56 × 112."""
    backbone = load(checkpoint)
    assert backbone.tokens_per_frame == 8 * 8  # 448 x 448 frames, capped at 112 x 112 px by the tiny processor
    assert backbone.llm_tokens_per_frame == 8  # 16 merged tokens per group of 2 frames
    assert backbone.patches_per_group(56, 112) == 32 and backbone.vision_dim == 32 and backbone.hidden_size == 64
    frames = torch.stack([frames_at(TIMES, 56, 112, seed=1), frames_at(TIMES, 56, 112, seed=2)])
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 4:] = False
    times = torch.tensor([TIMES, TIMES])
    with torch.no_grad():
        ft, pixels = backbone.encode(frames, mask, times)
        alone, _ = backbone.encode(frames[1:, :4], mask[1:, :4], times[1:, :4])
    assert ft.tokens.shape == (2, 4, 32, 32) and ft.grid == (4, 8) and pixels.shape == (2, 4, 3, 56, 112)
    assert ft.token_mask.sum((1, 2)).tolist() == [128, 64]
    assert ft.times[1].tolist() == [0.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(ft.tokens[1, :2], alone.tokens[0], atol=1e-5, rtol=1e-5)
    # The processor normalises with CLIP's mean/std; a group's pixels are the mean of its two frames.
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor(backbone.pixel_std)[:, None, None]
    pair = (frames[0, :2].float() / 255 - mean) / std
    torch.testing.assert_close(pixels[0, 0], pair.mean(0), atol=1e-5, rtol=1e-5)


def test_components_share_and_cover_the_hf_weights(checkpoint, hf):
    model = hf
    backbone = load(checkpoint)
    groups = [set(map(id, getattr(backbone, name).parameters())) for name in ("encoder", "projector", "llm")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    counts = [sum(p.numel() for p in getattr(backbone, n).parameters()) for n in ("encoder", "projector", "llm")]
    assert sum(counts) == sum(p.numel() for p in model.parameters())  # every weight belongs to one component
    backbone.encoder.requires_grad_(False)
    assert backbone.projector.mlp[0].weight.requires_grad  # freezing the tower leaves the merger alone


def test_pruned_tokens_keep_their_positions(checkpoint):
    """diffp on the LLM's tokens (28 px regions): only the top-left region changes after the first
    group, so 8 + 1 + 1 + 1 = 11 tokens stay, each at the (τ, row, column) it had unpruned."""
    backbone = load(checkpoint)
    frames = frames_at(TIMES, 56, 112).clone()
    frames[:] = frames[0]
    frames[:, :, :28, :28] = frames_at(TIMES, 28, 28, seed=5)
    diffp = placed(DifferentialFramePruning(threshold=0.1, pixel_std=backbone.pixel_std), "projected")
    with torch.no_grad():
        _, full, span_full, _, _ = vlc_forward(backbone, frames, TIMES, QUESTION, ANSWER)
        _, ft, span, _, _ = vlc_forward(backbone, frames, TIMES, QUESTION, ANSWER, compressor=diffp)
    assert ft.token_mask.sum((2,)).tolist() == [[8, 1, 1, 1]]
    assert span.positions.shape == (3, 1, 11)
    assert torch.equal(span.positions[:, 0], span_full.positions[:, 0, ft.token_mask[0].flatten()])
    assert span.positions[:, 0, 8:].T.tolist() == [[2, 0, 0], [4, 0, 0], [6, 0, 0]]
    assert int(span.positions.max()) == 6  # the text still continues at 7, one past the largest kept


@pytest.mark.parametrize("sits", ["encoder", "projected"])
def test_pooled_tokens_sit_on_the_smaller_grid(checkpoint, sits):
    """pool 2×2 before the merger (4×8 patches → 2×4 → merged 1×2) or after it (2×4 → 1×2): 2 tokens
    per group, at row 0 and columns 0, 1."""
    backbone = load(checkpoint)
    frames = frames_at(TIMES, 56, 112)
    with torch.no_grad():
        logits, ft, span, _, _ = vlc_forward(backbone, frames, TIMES, QUESTION, ANSWER, placed(SpatialPool(2), sits))
    assert ft.grid == (1, 2) and ft.token_mask.sum().item() == 8
    pos = span.positions[:, 0]
    assert pos[0].tolist() == [0, 0, 2, 2, 4, 4, 6, 6]
    assert pos[1].tolist() == [0] * 8 and pos[2].tolist() == [0, 1] * 4
    assert torch.isfinite(logits).all()


def test_stc_in_place_of_the_merger(checkpoint):
    """VideoLLaMA2's STC (v35: no padding) as the projector reads the pre-merge patches: 4 temporal
    groups of 4 × 8 → 2 of 2 × 4 at the LLM width, 16 tokens; their τ are the merged groups' times."""
    backbone = load(checkpoint)
    stc = STCProjector(backbone.vision_dim, out_dim=backbone.hidden_size, padding=0)  # compressor=stc_projector
    with torch.no_grad():
        logits, ft, span, _, _ = vlc_forward(backbone, frames_at(TIMES, 56, 112), TIMES, QUESTION, ANSWER, stc)
    assert ft.tokens.shape == (1, 2, 8, 64) and ft.grid == (2, 4) and ft.times.tolist() == [[0.5, 2.5]]
    assert span.positions[0, 0].tolist() == [0] * 8 + [4] * 8
    assert torch.isfinite(logits).all()


def test_merger_refuses_a_grid_it_cannot_merge(checkpoint):
    backbone = load(checkpoint)
    ft, _ = backbone.encode(frames_at(TIMES, 56, 112)[None], torch.ones(1, 8, dtype=torch.bool), torch.tensor([TIMES]))
    with pytest.raises(ValueError, match=r"merger needs the patch grid in 2x2 blocks, got grid \(1, 2\)"):
        backbone.project(SpatialPool(4)(ft))


def test_unknown_family_names_the_choices(checkpoint):
    assert "qwen2_5_vl" in FAMILIES
    with pytest.raises(ValueError, match=r"family='qwen2vl' is not a known family; choose one of \[.*'qwen2_5_vl'"):
        build_backbone("qwen2vl", str(checkpoint))


@pytest.mark.parametrize("name", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_model_configs_hold_options_the_backbone_takes(checkpoint, name):
    """The configs' backbone options, applied to the tiny checkpoint (no download)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"), resolve=True)
    options = dict(cfg["backbone"])
    assert options.pop("family") == "qwen2_5_vl" and options.pop("name_or_path").startswith("Qwen/Qwen2.5-VL-")
    options.update(dtype="float32", attn_implementation="sdpa")
    backbone = build_backbone("qwen2_5_vl", str(checkpoint), **options)
    assert backbone.tokens_per_frame == 64 and cfg["freeze"]["encoder"] is True


def test_pixel_bounds_override_the_processor(checkpoint):
    """max_pixels=56·56: smart_resize takes 56 × 112 frames down to 28 × 56, 2 × 4 patches per group."""
    backbone = load(checkpoint, max_pixels=56 * 56)
    assert backbone.patches_per_group(56, 112) == 8
    frames, mask, times = frames_at(TIMES, 56, 112)[None], torch.ones(1, 8, dtype=torch.bool), torch.tensor([TIMES])
    ft, pixels = backbone.encode(frames, mask, times)
    assert ft.grid == (2, 4) and pixels.shape[-2:] == (28, 56)


def test_the_model_config_trains_and_evaluates_through_videollm(checkpoint):
    """configs/model/qwen2_5_vl_3b.yaml as train.py builds it: the vision tower frozen, the projector not,
    every vision and decoder block checkpointed; the one-pass training loss (used with checkpointing)
    equals context + continuation; evaluation scores the options over 2 temporal groups of 8 tokens."""
    model = videollm_from_config("qwen2_5_vl_3b", checkpoint)
    assert not any(p.requires_grad for p in model.backbone.encoder.parameters())
    assert all(p.requires_grad for p in model.backbone.projector.parameters())
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(blocks) == 4 and all(m.gradient_checkpointing for m in blocks)  # 2 vision + 2 decoder blocks
    times = TIMES[:4]
    batch = batch_of(frames_at(times, 56, 112), times, QUESTION, ["red", "blue"], ANSWER)
    model.train()
    loss = model(batch)
    loss.backward()
    assert model.backbone.projector.mlp[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        two_pass = model.pipeline.loss(batch)
        record = model.pipeline.evaluate(batch)[0]
    assert abs(float(loss) - float(two_pass)) <= 1e-5
    assert record["visual_tokens"] == 16 and len(record["scores"]) == 2


def test_vst_through_the_pipeline_gets_the_spans_3d_positions(checkpoint):
    """VideoLLM with compressor=vst on Qwen2.5-VL: uncompressed (compress=false), the windowed
    prefill through the pipeline equals compressor=none's loss, which only holds if vst rotates with
    the span's M-RoPE positions (shifted past the prefix); compressed, the cache holds beacons."""
    from omegaconf import OmegaConf

    from vlc.model.video_llm import VideoLLM
    from vlc.run import CONFIG_DIR

    def build(compressor):
        cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "qwen2_5_vl_3b.yaml"), resolve=True,
                                     throw_on_missing=False)
        cfg["backbone"].update(name_or_path=str(checkpoint), dtype="float32", attn_implementation="sdpa")
        torch.manual_seed(0)
        return VideoLLM(**cfg, compressor=compressor).eval()

    times = TIMES[:4]
    batch = batch_of(frames_at(times, 56, 112), times, QUESTION, ["red", "blue"], ANSWER)
    vst = {"_target_": "vlc.compressors.vst.VisualSummarizationTokens", "window": 6, "ratio": 4, "ratios": [4]}
    with torch.no_grad():
        plain = build(None).pipeline.loss(batch)
        windowed = build({**vst, "compress": False}).pipeline.loss(batch)
        ctx = build(vst).pipeline.encode_context(batch)
    torch.testing.assert_close(windowed, plain, atol=1e-5, rtol=1e-5)
    prefix = int(ctx.length) - 4  # 16 visual tokens in windows of 4 and 4 (+ 4 and 4): one beacon per 4
    assert prefix > 0 and int(ctx.visual_tokens[0]) == 16
