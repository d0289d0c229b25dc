"""VideoLLaMA3 through build_backbone: with no compressor vlc's logits equal the HF model's own forward
(its processor's pruning off); vlc's diffp is the model's own DiffFP token for token (pruning on);
time markers; token counts of pool and of a frame dropped whole.

The tiny checkpoint (tests/hf_tiny_qwen.py): 14 px patches and the 2×2 bilinear downsample, so frames
of 56 × 112 px give 4 × 8 patches → 2 × 4 = 8 tokens per frame, each over a 28 px region.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers import VideoLlama3ForConditionalGeneration

from hf_tiny_qwen import batch_of, frames_at, hf_inputs, tiny_videollama3, videollm_from_config, vlc_forward
from vlc.backbone.hf import build_backbone
from vlc.compressors.diffp import DifferentialFramePruning
from vlc.compressors.pool import SpatialPool
from vlc.compressors.stc import STCProjector
from vlc.compressors.vst import VisualSummarizationTokens
from vlc.model.prefill import continue_from
from vlc.run import CONFIG_DIR

QUESTION, ANSWER = "What color is the shape?", "red"
TIMES = [0.0, 1.0, 2.0, 3.0]  # VideoLLaMA3 samples 1 frame per second


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_videollama3(tmp_path_factory.mktemp("videollama3"))


@pytest.fixture(scope="module")
def hf(checkpoint):
    model = VideoLlama3ForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval()


def load(checkpoint, **options):
    return build_backbone("videollama3", str(checkpoint), dtype="float32", attn_implementation="sdpa", **options).eval()


def model_inputs(backbone, frames, pruning: bool):
    return hf_inputs(backbone, frames, TIMES, 1.0, QUESTION, ANSWER, use_token_compression=pruning)


def static_frames():
    """Frame 1 changes only the top-left 28 px region; frame 2 repeats frame 1; frame 3 changes one
    value by one level in region (1, 3), far below the 0.1 threshold (2 / 2352 ≈ 0.00085)."""
    frames = frames_at(TIMES, 56, 112).clone()
    frames[1:] = frames[0]
    frames[1:, :, :28, :28] = frames_at(TIMES[:1], 28, 28, seed=7)
    frames[3, 0, 30, 90] ^= 1  # one level up or down
    return frames


def test_no_compressor_equals_the_hf_forward_without_its_pruning(checkpoint, hf):
    """Every token and the same prompt, markers included: max |Δ| 0.0 measured in fp32."""
    model = hf
    backbone = load(checkpoint)
    frames = frames_at(TIMES, 56, 112)
    with torch.no_grad():
        logits, ft, span, before, after = vlc_forward(backbone, frames, TIMES, QUESTION, ANSWER)
        inputs = model_inputs(backbone, frames, pruning=False)
        ref = model(**inputs).logits
    assert ft.tokens.shape == (1, 4, 8, 64) and ft.grid == (2, 4)
    assert int(inputs["video_grid_thw"].prod()) // 4 // 4 == 8  # HF: tokens per frame
    tok = backbone.tokenizer
    pad = tok.convert_tokens_to_ids("<|video_pad|>")
    ids = inputs["input_ids"][0]
    text = tok.decode(ids[len(before): -len(after)]).replace("<|video_pad|>", "V")
    assert text == "Time 0.0s:" + "V" * 8 + ",Time 1.0s:" + "V" * 8 + ",Time 2.0s:" + "V" * 8 + ",Time 3.0s:" + "V" * 8
    assert ids[: len(before)].tolist() == before and ids[-len(after):].tolist() == after
    assert span.embeds.shape[1] == len(ids) - len(before) - len(after) and (ids == pad).sum() == 32
    assert span.positions is None
    assert (logits - ref[:, -len(after):]).abs().max() <= 1e-4


def test_diffp_is_videollama3s_own_pruning(checkpoint, hf):
    """diffp on the vision model's tokens with fallback: first keeps exactly the processor's
    video_compression_mask (8 + 1 + 1 + 1: frame 2 is static and keeps its first token, so does
    frame 3), and the logits equal the HF forward with its pruning on."""
    model = hf
    backbone = load(checkpoint)
    frames = static_frames()
    diffp = DifferentialFramePruning(threshold=0.1, min_tokens=1, fallback="first", pixel_std=backbone.pixel_std)
    with torch.no_grad():
        logits, ft, _, _, after = vlc_forward(backbone, frames, TIMES, QUESTION, ANSWER, diffp)  # sits: encoder
        inputs = model_inputs(backbone, frames, pruning=True)
        ref = model(**inputs).logits[:, -len(after):]
    assert torch.equal(ft.token_mask.flatten(), inputs["video_compression_mask"])
    assert ft.token_mask.sum(2).tolist() == [[8, 1, 1, 1]]
    assert ft.token_mask[0, 1:].nonzero()[:, 1].tolist() == [0, 0, 0]
    assert logits.shape == ref.shape and (logits - ref).abs().max() <= 1e-4


def test_most_changed_fallback_keeps_the_region_that_moved(checkpoint):
    """vlc's default fallback differs from VideoLLaMA3's only on frames with no token over the
    threshold: frame 3 keeps region (1, 3) = token 7, whose value changed, instead of token 0. (On the
    exactly static frame 2 every region ties at 0, and which one it keeps is topk's choice.)"""
    backbone = load(checkpoint)
    diffp = DifferentialFramePruning(threshold=0.1, pixel_std=backbone.pixel_std)
    with torch.no_grad():
        _, ft, _, _, _ = vlc_forward(backbone, static_frames(), TIMES, QUESTION, ANSWER, diffp)
    assert ft.token_mask[0, 3].nonzero()[:, 0].tolist() == [7] and ft.token_mask[0].sum(1).tolist() == [8, 1, 1, 1]


def test_pool_and_a_dropped_frame_keep_the_markers_in_step(checkpoint):
    """pool 2×2 on the downsampled grid (2 × 4 → 1 × 2): 2 tokens per frame; a frame a compressor
    drops whole loses its marker, the next one keeps its time and the separator."""
    backbone = load(checkpoint)
    with torch.no_grad():
        _, ft, span, _, _ = vlc_forward(backbone, frames_at(TIMES, 56, 112), TIMES, QUESTION, ANSWER, SpatialPool(2))
        assert ft.grid == (1, 2) and ft.token_mask.sum().item() == 8
        texts = ["Time 0.0s:"] + [f",Time {t:.1f}s:" for t in TIMES[1:]]
        marker = [len(backbone.marker_ids(text)) for text in texts]
        assert span.embeds.shape[1] == sum(marker) + 8
        dropped = ft.replace(token_mask=ft.token_mask.clone())
        dropped.token_mask[0, 1] = False
        short = backbone.visual_span(dropped)
    assert short.embeds.shape[1] == marker[0] + len(backbone.marker_ids(",Time 2.0s:")) + marker[3] + 6
    time2 = backbone.embed(torch.tensor(backbone.marker_ids(",Time 2.0s:")))
    start = marker[0] + 2
    torch.testing.assert_close(short.embeds[0, start: start + len(time2)], time2)


def test_stc_in_place_of_the_projector(checkpoint):
    """VideoLLaMA2's STC (v35) reads the vision model's 2 × 4 tokens per frame: 4 frames → 2 of
    1 × 2 at the LLM width, each behind the marker of its merged time (0.5 s, 2.5 s)."""
    backbone = load(checkpoint)
    stc = STCProjector(backbone.vision_dim, out_dim=backbone.hidden_size, padding=0)  # compressor=stc_projector
    with torch.no_grad():
        _, ft, span, _, _ = vlc_forward(backbone, frames_at(TIMES, 56, 112), TIMES, QUESTION, ANSWER, stc)
    assert ft.tokens.shape == (1, 2, 2, 64) and ft.times.tolist() == [[0.5, 2.5]]
    markers = len(backbone.marker_ids("Time 0.5s:")) + len(backbone.marker_ids(",Time 2.5s:"))
    assert span.embeds.shape[1] == markers + 4


def test_vst_without_compression_equals_the_plain_forward(checkpoint):
    """vst's windowed prefill (1-D RoPE here; windows of 16 over the 59-entry span, 32 tokens and 27
    marker tokens) then the question and answer: the same logits as one forward over the prompt."""
    backbone = load(checkpoint)
    with torch.no_grad():
        full, _, span, before, after = vlc_forward(backbone, frames_at(TIMES, 56, 112), TIMES, QUESTION, ANSWER)
        vst = VisualSummarizationTokens(window=16, ratio=4, ratios=(4,), compress=False).eval()
        vst.bind(backbone.llm, backbone.tokenizer)
        prefix = torch.tensor([before])
        ctx = vst.prefill(backbone.llm, backbone.embed(prefix), torch.ones_like(prefix), [(span.embeds, span.mask)])
        assert span.embeds.shape[1] == 59 and ctx.length == len(before) + 59
        ids = torch.tensor([after])
        logits = continue_from(backbone.llm, ctx, backbone.embed(ids), torch.ones_like(ids))
    assert (logits - full).abs().max() <= 1e-4


def test_batch_of_videos_equals_each_alone_and_counts_tokens(checkpoint):
    backbone = load(checkpoint)
    assert backbone.tokens_per_frame == backbone.llm_tokens_per_frame == 4  # 180 frames of 448 x 448, tiny budget
    assert backbone.tokens_per_video_frame(4, 56, 112) == 8
    frames = torch.stack([frames_at(TIMES, 56, 112, seed=1), frames_at(TIMES, 56, 112, seed=2)])
    mask, times = torch.ones(2, 4, dtype=torch.bool), torch.tensor([TIMES, TIMES])
    with torch.no_grad():
        ft, pixels = backbone.encode(frames, mask, times)
        alone, alone_pixels = backbone.encode(frames[1:], mask[1:], times[1:])
    assert ft.tokens.shape == (2, 4, 8, 32) and pixels.shape == (2, 4, 3, 56, 112)
    torch.testing.assert_close(ft.tokens[1], alone.tokens[0], atol=1e-5, rtol=1e-5)
    # The processor normalises with mean = std = 0.5: pixels in [-1, 1].
    torch.testing.assert_close(pixels[0, 0], frames[0, 0].float() / 127.5 - 1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_pixels[0], pixels[1])


@pytest.mark.parametrize("name", ["videollama3_2b", "videollama3_7b"])
def test_model_configs_hold_options_the_backbone_takes(checkpoint, name):
    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    options = OmegaConf.to_container(cfg.backbone, resolve=True, throw_on_missing=False)
    assert options.pop("family") == "videollama3" and options.pop("name_or_path") == "???"
    options.update(dtype="float32", attn_implementation="sdpa")
    backbone = build_backbone("videollama3", str(checkpoint), **options)
    assert backbone.tokens_per_frame == 4 and cfg.native.fps == 1.0 and cfg.native.max_frames == 180


def test_the_model_config_trains_and_evaluates_through_videollm(checkpoint):
    """configs/model/videollama3_2b.yaml as train.py builds it: the vision tower frozen, the projector not,
    every vision and decoder block checkpointed; the one-pass training loss (used with checkpointing)
    equals context + continuation; evaluation scores the options over 4 frames of 8 tokens."""
    model = videollm_from_config("videollama3_2b", checkpoint)
    assert not any(p.requires_grad for p in model.backbone.encoder.parameters())
    assert all(p.requires_grad for p in model.backbone.projector.parameters())
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(blocks) == 4 and all(m.gradient_checkpointing for m in blocks)  # 2 vision + 2 decoder blocks
    times = TIMES[:4]
    batch = batch_of(frames_at(times, 56, 112), times, QUESTION, ["red", "blue"], ANSWER)
    model.train()
    loss = model(batch)
    loss.backward()
    assert model.backbone.projector.readout[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        two_pass = model.pipeline.loss(batch)
        record = model.pipeline.evaluate(batch)[0]
    assert abs(float(loss) - float(two_pass)) <= 1e-5
    assert record["visual_tokens"] == 32 and len(record["scores"]) == 2
