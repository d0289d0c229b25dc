"""Tiny random Qwen2.5-VL and VideoLLaMA3 checkpoints, saved the way the hub holds them (model +
processor in one folder), so tests load them through ``build_backbone`` exactly as a user does.

Also vlc's side of the equality tests: the user path through ``VideoPipeline`` (the HF side is the
model's own forward on its processor's output for the same frames and text).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    VideoLlama3Config,
    VideoLlama3ForConditionalGeneration,
    VideoLlama3ImageProcessor,
    VideoLlama3Processor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor

from vlc.backbone.tokenizer import build_tiny_tokenizer
from vlc.compressors.none import Identity
from vlc.model.pipeline import VideoPipeline
from vlc.model.prefill import continue_from

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"]


def chat_template(video: str) -> str:
    """Qwen2's chat markers, the default system turn, and ``video`` where a video is (Qwen2.5-VL:
    ``<|vision_start|><|video_pad|><|vision_end|>``; VideoLLaMA3: ``<|video_pad|>`` and a newline)."""
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% for content in message['content'] %}"
        "{% if content['type'] == 'video' %}{{ '" + video + "' }}"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
# Frames up to 112 x 112 keep their size: smart_resize only rounds the sides to multiples of 28.
SIZE = {"shortest_edge": 28 * 28, "longest_edge": 112 * 112}


def vision_tokenizer():
    """vlc's tiny byte-level BPE tokenizer plus the vision markers both families use."""
    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<video>", *VISION_TOKENS]})
    return tok


def _text_config(tok, **extra) -> dict:
    return dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra,
    )


def tiny_qwen2_5_vl(path: Path, seed: int = 0, tokens_per_second: int = 2) -> Path:
    """Qwen2.5-VL with 14 px patches, temporal patch 2, 2×2 merge, window attention over 2×2 merge
    units (56 px) in block 0 and full attention in block 1; head_dim 16, mrope_section [2, 3, 3]."""
    tok = vision_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                       "rope_theta": 1e6}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1],
                           out_hidden_size=64, tokens_per_second=tokens_per_second),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(path)
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=SIZE),
        video_processor=Qwen2VLVideoProcessor(size=SIZE, cap_pixels_per_frame=False),
        tokenizer=tok,
        chat_template=chat_template("<|vision_start|><|video_pad|><|vision_end|>"),
    ).save_pretrained(path)
    return path


def tiny_videollama3(path: Path, seed: int = 0) -> Path:
    """VideoLLaMA3 with 14 px patches and a 2×2 bilinear downsample in the vision model."""
    tok = vision_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    config = VideoLlama3Config(
        text_config=dict(model_type="qwen2", **_text_config(tok)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=14),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    )
    torch.manual_seed(seed)
    VideoLlama3ForConditionalGeneration(config).save_pretrained(path)
    # The video processor divides its longest_edge by the frame count (VideoLLaMA3's budget per video).
    VideoLlama3Processor(
        image_processor=VideoLlama3ImageProcessor(size=SIZE),
        video_processor=VideoLlama3VideoProcessor(size={"shortest_edge": SIZE["shortest_edge"],
                                                        "longest_edge": SIZE["longest_edge"] * 64}),
        tokenizer=tok,
        chat_template=chat_template("<|video_pad|>\\n"),
    ).save_pretrained(path)
    return path


def frames_at(times: list[float], height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 (T, 3, H, W) random frames."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (len(times), 3, height, width), generator=g, dtype=torch.uint8)


def hf_inputs(backbone, frames, times, fps: float, question: str, answer: str, **processor_kwargs):
    """The model's own inputs for one sample: its chat template (a video, the question; the answer)
    rendered and run through its processor with the frames' times."""
    processor = backbone.processor
    chat = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    text = processor.apply_chat_template(chat, tokenize=False)
    return processor(text=[text], videos=[frames], video_metadata=[metadata(times, fps)], return_tensors="pt",
                     **processor_kwargs)


def metadata(times: list[float], fps: float) -> dict:
    """What the processor needs to know the frames' times: frame i at index round(t_i · fps)."""
    return {"total_num_frames": len(times), "fps": fps, "frames_indices": [round(t * fps) for t in times]}


def placed(compressor, sits: str):
    """The compressor at another of its placements, as ``compressor.sits=projected`` puts it."""
    compressor.sits = sits
    return compressor


def vlc_forward(backbone, frames, times, question: str, answer: str, compressor=None):
    """vlc's path for one sample, through ``VideoPipeline``: encode → compress where the compressor
    sits → project → visual span → prefill of prefix | span, then the question and answer continued
    from that context. Returns (logits of the question + answer (1, A, V), the FrameTokens that
    reached the span, the span, the prefix ids, the question + answer ids)."""
    pipeline = VideoPipeline(backbone, compressor if compressor is not None else Identity()).eval()
    batch = dict(pixels=frames[None], frame_mask=torch.ones(1, len(times), dtype=torch.bool),
                 times=torch.tensor([times]), questions=[question], candidates=[None], answers=[answer])
    ft = pipeline.visual_tokens(batch["pixels"], batch["frame_mask"], batch["times"], batch)
    text = backbone.prompt.training_batch([question], [None], [answer])
    ctx = pipeline.encode_context(batch)
    logits = continue_from(backbone.llm, ctx, pipeline.embed(text.ids), text.mask)
    return logits, ft, backbone.visual_span(ft), backbone.prompt.prefix_ids(), text.ids[0].tolist()


def videollm_from_config(name: str, path: Path):
    """``VideoLLM`` built from ``configs/model/<name>.yaml`` as train.py builds it, pointed at ``path``."""
    from omegaconf import OmegaConf

    from vlc.model.video_llm import VideoLLM
    from vlc.run import CONFIG_DIR

    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"), resolve=True,
                                 throw_on_missing=False)
    cfg["backbone"].update(name_or_path=str(path), dtype="float32", attn_implementation="sdpa")
    return VideoLLM(**cfg)


def batch_of(frames: torch.Tensor, times: list[float], question: str, candidates: list[str], answer: str) -> dict:
    return dict(pixels=frames[None], frame_mask=torch.ones(1, len(times), dtype=torch.bool),
                times=torch.tensor([times]), questions=[question], candidates=[candidates], answers=[answer],
                ids=["v0"], tasks=["needle"])
