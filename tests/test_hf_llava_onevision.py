"""LLaVA-OneVision as a vlc Backbone: a tiny random LlavaOnevisionForConditionalGeneration saved to
a folder, loaded through ``build_backbone`` as a hub checkpoint would be, run through vlc's
``VideoPipeline`` and compared with the model's own forward (its processor, its chat template,
``model(**inputs)``)."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import hf_logits, pipeline_logits, random_frames, save_tiny_llava_onevision, tiny_tokenizer, video_batch

from vlc.backbone.hf import FAMILIES, build_backbone


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory):
    return save_tiny_llava_onevision(tmp_path_factory.mktemp("llava_ov"))


@pytest.fixture(scope="module")
def ov(ov_dir):
    return build_backbone("llava_onevision", str(ov_dir), dtype="float32", attn_implementation="sdpa")


@torch.no_grad()
def test_logits_equal_the_models_own_forward(ov):
    frames = random_frames(1, 3)  # 20 px: the processor resizes to 16, as it would 1080p to 384
    ours, context_length, text_ids = pipeline_logits(ov, frames, "What color is the shape?", "red")
    ref, ref_ids = hf_logits(ov, frames, "What color is the shape?", "red")
    # The same token sequence: vlc's prefix and question/answer ids around the model's 3 x 9 + 1 video slots.
    prefix = ov.prompt.prefix_ids()
    assert context_length - len(prefix) == 28 == int((ref_ids == ov.video_token_id).sum())
    assert ref_ids[0, : len(prefix)].tolist() == prefix
    assert torch.equal(text_ids[0], ref_ids[0, len(prefix) + 28 :])
    assert ours.shape == (1, text_ids.shape[1], len(ov.tokenizer))
    assert (ours - ref[:, -text_ids.shape[1] :]).abs().max().item() <= 1e-4


def test_tokens_per_frame_are_the_models_own(ov):
    assert ov.grid == (5, 5) and ov.tokens_per_frame == 25 and ov.vision_dim == 32
    assert ov.llm_tokens_per_frame == 9 and ov.hidden_size == 64
    # The processor's own count of video placeholders: frames x 9 + the newline.
    counts = ov.processor._get_num_multimodal_tokens(video_sizes=[(4, 16, 16), (7, 16, 16)])
    assert counts["num_video_tokens"] == [4 * 9 + 1, 7 * 9 + 1]


def test_real_geometry_196_tokens_per_frame():
    """The released checkpoints' numbers, from their configs' geometry (no download): SigLIP at
    384 px / 14 px patches → 27 x 27 = 729 encoder tokens, pooled to 14 x 14 = 196 per frame; the
    processor writes 32 x 196 + 1 = 6273 placeholders for LLaVA-OneVision's 32 frames."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    from vlc.backbone.hf.llava_onevision import LlavaOnevisionBackbone

    vision = LlavaOnevisionConfig().vision_config
    side = vision.image_size // vision.patch_size
    assert (side, LlavaOnevisionBackbone.pooled_grid((side, side))) == (27, (14, 14))
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(), video_processor=LlavaOnevisionVideoProcessor(),
        tokenizer=tiny_tokenizer(), num_image_tokens=729, vision_feature_select_strategy="full",
    )
    assert processor._get_num_multimodal_tokens(video_sizes=[(32, 384, 384)])["num_video_tokens"] == [6273]


def test_prompt_is_the_chat_template_cut_at_the_video(ov):
    assert ov.prompt_template == {
        "prefix": "<|im_start|>user\n",
        "question": "\n{question}{options}<|im_end|>\n<|im_start|>assistant\n",
        "answer": "{answer}<|im_end|>\n",
    }
    batch = ov.prompt.training_batch(["Why?"], [None], ["yes"])
    labelled = batch.ids[0][batch.labels[0] != -100]
    assert ov.tokenizer.decode(labelled) == "yes<|im_end|>\n"  # the answer and the turn's end are predicted


@torch.no_grad()
def test_layer_list_and_another_layer_equal_the_models_own_forward(tmp_path):
    """vision_feature_layer as a list concatenates those layers' states (vision_dim doubles)."""
    path = save_tiny_llava_onevision(tmp_path, seed=1, vision_feature_layer=[-1, -3])
    bb = build_backbone("llava_onevision", str(path), dtype="float32", attn_implementation="sdpa")
    assert bb.vision_dim == 64
    frames = random_frames(1, 2, seed=3)
    ours, _, text_ids = pipeline_logits(bb, frames, "How many?", "two")
    ref, _ = hf_logits(bb, frames, "How many?", "two")
    assert (ours - ref[:, -text_ids.shape[1] :]).abs().max().item() <= 1e-4


@torch.no_grad()
def test_padded_frames_never_reach_the_span(ov):
    frames = random_frames(2, 3, seed=5)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ft, pixels = ov.encode(frames, mask, torch.zeros(2, 3))
    assert pixels.shape == (2, 3, 3, 15, 15)  # the 5 x 3 px the patches cover, of 16
    span = ov.visual_span(ov.project(ft))
    assert span.mask.sum(1).tolist() == [28, 19]  # 3 x 9 + 1 and 2 x 9 + 1
    alone = ov.visual_span(ov.project(ov.encode(frames[1:, :2], mask[1:, :2], torch.zeros(1, 2))[0]))
    assert torch.allclose(span.embeds[1, :19], alone.embeds[0], atol=1e-6)
    assert torch.equal(span.embeds[1, 18], ov.projector.image_newline)  # the newline closes the video
    open_span = ov.visual_span(ov.project(ft), closing=False)  # a streamed chunk before the last
    assert open_span.mask.sum(1).tolist() == [27, 18]


def test_parts_are_the_models_own_and_freeze_apart(ov):
    hf = ov.hf_model
    assert ov.encoder is hf.model.vision_tower
    assert ov.projector.multi_modal_projector is hf.model.multi_modal_projector
    assert ov.projector.image_newline is hf.model.image_newline
    assert ov.llm.model is hf.model.language_model and ov.llm.lm_head is hf.lm_head
    # Every weight exactly once: the view copies nothing and owns nothing else.
    assert {id(p) for p in ov.parameters()} == {id(p) for p in hf.parameters()}
    assert not set(map(id, ov.encoder.parameters())) & set(map(id, ov.llm.parameters()))
    assert type(ov.llm).__name__ == "Qwen2ForCausalLM" and len(ov.llm.get_decoder().layers) == 2


def test_lora_on_the_llm_leaves_the_vision_tower_alone(ov_dir):
    pytest.importorskip("peft")
    from vlc.backbone.lora import apply_lora

    bb = build_backbone("llava_onevision", str(ov_dir), dtype="float32", attn_implementation="sdpa")
    apply_lora(bb.llm, enabled=True, r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    adapters = [n for n, _ in bb.named_parameters() if "lora_" in n]
    assert len(adapters) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B), all in the language model
    assert all(n.startswith("llm.") for n in adapters)


def test_unknown_family_and_missing_folder_are_named():
    with pytest.raises(ValueError, match="backbone.family='llava' is not a known family; choose one of"):
        build_backbone("llava", "x")
    assert {"llava_onevision", "llava_next_video", "videoxl"} <= set(FAMILIES)
    with pytest.raises(FileNotFoundError, match="backbone.name_or_path: no model folder at /nonexistent/ov"):
        build_backbone("llava_onevision", "/nonexistent/ov")
    with pytest.raises(ValueError, match="backbone.dtype='fp8'"):
        build_backbone("llava_onevision", "/nonexistent/ov", dtype="fp8")


def test_short_lora_finetune_lowers_the_answer_loss(ov_dir):
    """A few LoRA steps on the LLM (frozen vision tower, gradient checkpointing on) lower the loss of
    the answer tokens; nothing outside the adapters changes."""
    pytest.importorskip("peft")
    from vlc.backbone.lora import apply_lora
    from vlc.compressors.none import Identity
    from vlc.model.pipeline import VideoPipeline

    bb = build_backbone("llava_onevision", str(ov_dir), dtype="float32", attn_implementation="sdpa")
    bb.encoder.requires_grad_(False)
    bb.projector.requires_grad_(False)
    apply_lora(bb.llm, enabled=True, r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    bb.set_grad_checkpointing()
    bb.train()
    trainable = [p for p in bb.parameters() if p.requires_grad]
    assert len(trainable) == 2 * 4 * 2  # layers x projections x (A, B)
    before = {n: p.detach().clone() for n, p in bb.named_parameters() if not p.requires_grad}
    optim = torch.optim.AdamW(trainable, lr=1e-2)
    pipeline = VideoPipeline(bb, Identity())
    batch = video_batch(random_frames(1, 2, seed=11), "What color?", "red")
    losses = []
    for _ in range(6):
        loss = pipeline.loss(batch, one_pass=True)  # as training runs it with gradient checkpointing
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses  # measured 6.26 → 5.56 in 6 steps
    assert all(torch.equal(p, before[n]) for n, p in bb.named_parameters() if not p.requires_grad)
