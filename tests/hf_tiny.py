"""Tiny random pretrained video LLMs, saved the way their hub checkpoints are, for tests.

Each factory builds the real transformers class from a tiny config (random weights), builds its
processor around a tokenizer made locally (``build_tiny_tokenizer`` plus the model's placeholder
tokens), and ``save_pretrained``s both into a folder. Tests then load that folder through
``vlc.backbone.hf.build_backbone``: the same code path a user takes with a hub name, no download.

The geometry mimics the real models where it matters to the layout. LLaVA-OneVision's SigLIP
sees 384 px with 14 px patches: 27 x 27 patches cover 378 px (the last 6 px are never read), and
the 2x2 bilinear pool gives 14 x 14, each pooled token covering 378 / 14 = 27 px. The tiny one sees
16 px with 3 px patches: 5 x 5 patches cover 15 px (1 px never read), pooled to 3 x 3 tokens of
5 px each — an odd grid side, a dropped border and pooled regions that tile, as in the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlc.backbone.tokenizer import build_tiny_tokenizer

IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"

# LLaVA-OneVision's chat template (Qwen2 chat markers; images, then videos, then the text).
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_tokenizer():
    """vlc's tiny byte-level BPE tokenizer with the LLaVA placeholders ``<image>`` and ``<video>``."""
    tok = build_tiny_tokenizer()
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tok


def tiny_qwen2_config(vocab_size: int, **overrides):
    from transformers import Qwen2Config

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=True,  # as LLaVA-OneVision-0.5B (Qwen2-0.5B ties them)
    )
    kw.update(overrides)
    return Qwen2Config(**kw)


def save_tiny_llava_onevision(path: str | Path, seed: int = 0, vision_feature_layer=-1,
                              vision_feature_select_strategy: str = "full") -> Path:
    """A tiny LlavaOnevisionForConditionalGeneration + LlavaOnevisionProcessor saved to ``path``.

    SigLIP: 16 px, 3 px patches (5 x 5 = 25 patches), width 32, 3 layers; Qwen2: width 64, 2 layers.
    Video tokens per frame: ceil(5/2)^2 = 9, plus one newline after the last frame.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        SiglipVisionConfig,
    )

    path = Path(path)
    tok = tiny_tokenizer()
    vision = SiglipVisionConfig(
        image_size=16, patch_size=3, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        text_config=tiny_qwen2_config(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tok.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        image_grid_pinpoints=[[16, 16], [16, 32], [32, 16], [32, 32]],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():  # a visible newline: random-init is ~N(0, 1/sqrt(D)), keep it that way
        model.model.image_newline.normal_(0, 1.0)
    model.save_pretrained(path)
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # the released checkpoints' SigLIP normalisation
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size={"height": 16, "width": 16}, image_grid_pinpoints=config.image_grid_pinpoints,
            image_mean=mean, image_std=std,
        ),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 16, "width": 16}, image_mean=mean, image_std=std),
        tokenizer=tok,
        num_image_tokens=25,
        vision_feature_select_strategy=vision_feature_select_strategy,
        chat_template=LLAVA_ONEVISION_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


def random_frames(batch: int, frames: int, size: int = 20, seed: int = 0) -> torch.Tensor:
    """uint8 frames (B, T, 3, size, size); a size other than the processor's exercises its resize."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, 3, size, size), generator=g, dtype=torch.uint8)


def video_batch(frames: torch.Tensor, question: str, answer: str, frame_mask: torch.Tensor | None = None) -> dict:
    """A batch as the data modules give it: the same question and answer for every video."""
    B, T = frames.shape[:2]
    mask = torch.ones(B, T, dtype=torch.bool) if frame_mask is None else frame_mask
    return {"pixels": frames, "frame_mask": mask, "times": torch.arange(T, dtype=torch.float).expand(B, T),
            "questions": [question] * B, "candidates": [None] * B, "answers": [answer] * B}


def answer_logits(pipeline, frames, question: str, answer: str, compress: bool = True):
    """The user path: ``VideoPipeline.encode_context`` (encode → compressor where it sits → project →
    visual span → prefill) and the question + answer continued from that context.
    Returns (logits of the text (1, Lt, V), the context's length before the text, the text ids (1, Lt))."""
    from vlc.model.prefill import continue_from

    ctx = pipeline.encode_context(video_batch(frames, question, answer), compress=compress)
    length = ctx.length
    text = pipeline.prompt.training_batch([question], [None], [answer])
    logits = continue_from(pipeline.backbone.llm, ctx, pipeline.embed(text.ids), text.mask)
    return logits, length, text.ids


def pipeline_logits(backbone, frames, question: str, answer: str, compressor=None):
    """``answer_logits`` through a ``VideoPipeline`` of ``backbone`` and ``compressor`` (none: Identity)."""
    from vlc.compressors.none import Identity
    from vlc.model.pipeline import VideoPipeline

    return answer_logits(VideoPipeline(backbone, compressor or Identity()), frames, question, answer)


def hf_logits(backbone, frames, question: str, answer: str):
    """The same sample through the model's own path: its processor on the frames and on the chat
    template's text (one video, the question; the assistant's answer), then ``model(**inputs)``.
    Returns (logits (1, L, V), input_ids (1, L))."""
    processor = backbone.processor
    chat = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    text = processor.apply_chat_template(chat, tokenize=False)
    inputs = processor(text=text, videos=[frames[0]], return_tensors="pt")
    return backbone.hf_model(**inputs).logits, inputs["input_ids"]


# ---------------------------------------------------------------------------- LLaVA-NeXT-Video

# LLaVA-NeXT-Video-7B's chat template (Vicuna roles "USER: " / "ASSISTANT:", each text followed by a space).
LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def tiny_llama_tokenizer():
    """The tiny tokenizer with Llama's habit: ``<s>`` prepended whenever special tokens are added."""
    from tokenizers import processors

    tok = tiny_tokenizer()
    tok.add_tokens(["<s>"], special_tokens=True)
    bos = tok.convert_tokens_to_ids("<s>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.bos_token = "<s>"
    return tok


def save_tiny_llava_next_video(path: str | Path, seed: int = 0) -> Path:
    """A tiny LlavaNextVideoForConditionalGeneration + LlavaNextVideoProcessor saved to ``path``.

    CLIP: 24 px, 4 px patches (6 x 6 = 36 patches + CLS), width 32, 3 layers, layer -2 without CLS;
    average pool 2 → 3 x 3 = 9 tokens per frame, no newline for video; Llama: width 64, 2 layers.
    The video processor resizes the shortest side to 24 and centre-crops 24 x 24 (336 for the real one).
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextImageProcessor,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
        LlavaNextVideoVideoProcessor,
    )

    path = Path(path)
    tok = tiny_llama_tokenizer()
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    vision = CLIPVisionConfig(image_size=24, patch_size=4, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=4, projection_dim=32)
    config = LlavaNextVideoConfig(
        text_config=text, vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tok.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        spatial_pool_mode="average", spatial_pool_stride=2, image_grid_pinpoints=[[24, 48], [48, 24], [48, 48]],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}),
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
                                                image_grid_pinpoints=config.image_grid_pinpoints),
        tokenizer=tok, chat_template=LLAVA_NEXT_VIDEO_TEMPLATE, patch_size=4,
        vision_feature_select_strategy="default",
    )
    processor.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------- Video-XL

# Video-XL's LlavaQwenForCausalLM as saved by its training code (transformers 4.40 names): a CLIP
# vision tower inside LLaVA's CLIPVisionTower, an mlp2x_gelu mm_projector, Qwen2 with per-layer
# beacon q/k/v projections and a one-row beacon embedding.
VIDEOXL_TINY = {
    "clip": dict(hidden=64, intermediate=128, layers=2, image=24, patch=4),  # 6 x 6 patches, 1 head of 64
    "qwen2": dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2),
}


def videoxl_tensors(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of a tiny Video-XL checkpoint, by its key in Video-XL's own layout."""
    c, q = VIDEOXL_TINY["clip"], VIDEOXL_TINY["qwen2"]
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.1, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    t: dict[str, torch.Tensor] = {}
    v = "model.vision_tower.vision_tower.vision_model."
    H, I = c["hidden"], c["intermediate"]
    t[v + "embeddings.class_embedding"] = rand(H)
    t[v + "embeddings.patch_embedding.weight"] = rand(H, 3, c["patch"], c["patch"])
    t[v + "embeddings.position_embedding.weight"] = rand((c["image"] // c["patch"]) ** 2 + 1, H)
    for ln in ("pre_layrnorm", "post_layernorm"):
        t[v + f"{ln}.weight"], t[v + f"{ln}.bias"] = rand(H, mean=1.0), rand(H)
    for i in range(c["layers"]):
        p = v + f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            t[p + f"self_attn.{proj}.weight"], t[p + f"self_attn.{proj}.bias"] = rand(H, H), rand(H)
        for ln in ("layer_norm1", "layer_norm2"):
            t[p + f"{ln}.weight"], t[p + f"{ln}.bias"] = rand(H, mean=1.0), rand(H)
        t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = rand(I, H), rand(I)
        t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = rand(H, I), rand(H)

    D, Iq, heads, kv = q["hidden"], q["intermediate"], q["heads"], q["kv_heads"]
    Dkv = D // heads * kv
    t["model.mm_projector.0.weight"], t["model.mm_projector.0.bias"] = rand(D, H), rand(D)
    t["model.mm_projector.2.weight"], t["model.mm_projector.2.bias"] = rand(D, D), rand(D)
    t["model.embed_tokens.weight"] = rand(vocab_size, D)
    t["model.beacon_embed_tokens.weight"] = rand(1, D)
    for i in range(q["layers"]):
        p = f"model.layers.{i}."
        for name, out in (("q", D), ("k", Dkv), ("v", Dkv)):
            t[p + f"self_attn.{name}_proj.weight"], t[p + f"self_attn.{name}_proj.bias"] = rand(out, D), rand(out)
            # trained beacon projections: near the base ones, not equal to them
            base = p + f"self_attn.{name}_proj."
            t[p + f"self_attn.beacon_{name}_proj.weight"] = t[base + "weight"] + rand(out, D, std=0.05)
            t[p + f"self_attn.beacon_{name}_proj.bias"] = t[base + "bias"] + rand(out, std=0.05)
        t[p + "self_attn.o_proj.weight"] = rand(D, D)
        t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"] = rand(Iq, D), rand(Iq, D)
        t[p + "mlp.down_proj.weight"] = rand(D, Iq)
        t[p + "input_layernorm.weight"] = rand(D, mean=1.0)
        t[p + "post_attention_layernorm.weight"] = rand(D, mean=1.0)
    t["model.norm.weight"] = rand(D, mean=1.0)
    t["lm_head.weight"] = rand(vocab_size, D)
    return t


def videoxl_config(vocab_size: int, eos_token_id: int) -> dict:
    """config.json of the tiny checkpoint: Video-XL's fields (LLaVA mm_*, beacon_*) at tiny sizes."""
    c, q = VIDEOXL_TINY["clip"], VIDEOXL_TINY["qwen2"]
    return {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
        "vocab_size": vocab_size, "hidden_size": q["hidden"], "intermediate_size": q["intermediate"],
        "num_hidden_layers": q["layers"], "num_attention_heads": q["heads"], "num_key_value_heads": q["kv_heads"],
        "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": None, "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 32768,
        "max_window_layers": 28, "attention_dropout": 0.0, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id,
        "torch_dtype": "float32", "use_cache": True,
        "mm_vision_tower": "clip-vit-large-patch14-336", "mm_hidden_size": c["hidden"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "unires",
        "mm_resampler_type": "spatial_pool", "mm_spatial_pool_stride": 2, "mm_spatial_pool_mode": "average",
        "mm_spatial_pool_out_channels": 1024, "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "image_aspect_ratio": "anyres", "use_mm_proj": True, "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right", "enable_beacon": True,
        "beacon_window": 16, "beacon_stride": 16, "beacon_attn": "full-coverage", "beacon_ratio": [2, 4, 8],
        "beacon_ratio_mix": "step-random", "beacon_param": ["q", "k", "v"], "beacon_embed_init": "eos",
        "beacon_sink_size": 0, "beacon_attend_prev": True, "beacon_pos": "interleave", "beacon_parallel_window": 1,
    }


def save_tiny_videoxl(path: str | Path, seed: int = 0, tensors: dict | None = None) -> tuple[Path, dict]:
    """A tiny Video-XL checkpoint folder: config.json, two safetensors shards with their index, and
    the tokenizer. Returns (folder, the tensors written by key)."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer()
    tensors = videoxl_tensors(len(tok), seed) if tensors is None else tensors
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, part in shards.items():
        save_file({k: tensors[k].contiguous() for k in part}, str(path / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(videoxl_config(len(tok), tok.eos_token_id), indent=2))
    tok.save_pretrained(path)
    return path, tensors
