"""`family: videoxl`: Video-XL's released checkpoint, read into transformers' own classes and vlc's vst.

Video-XL (Shu et al., CVPR 2025) is saved by its own ``LlavaQwenForCausalLM`` (LLaVA layout); there is
no transformers class for it and vlc never runs remote code, so this module reads its folder
(config.json + safetensors) and puts every tensor where vlc keeps it:

    model.vision_tower.vision_tower.vision_model.*        → encoder    (transformers CLIPVisionModel)
    model.mm_projector.{0,2}.{weight,bias}                → projector  (Linear, GELU, Linear: mlp2x_gelu)
    model.embed_tokens / layers.N.* / norm, lm_head       → llm        (transformers Qwen2ForCausalLM)
    model.layers.N.self_attn.beacon_{q,k,v}_proj.*        → vst.beacon_{q,k,v}[N]
    model.beacon_embed_tokens.weight (1, D)               → vst.beacon_embed (D,)

Any other key is an error, as is a missing one: a checkpoint that does not match its config is
reported, never half-loaded. ``model.image_newline`` (only written when ``mm_patch_merge_type``
holds "unpad") is read by images alone and is left out, by name.

The video path (``LlavaMetaForCausalLM.encode_multimodals`` + ``get_2dPool``; Video-XL's demo and
lmms-eval code):

    frames ─CLIP image processor─▶ (T, 3, 336, 336)    shortest side to 336, centre crop, CLIP mean/std
           ─CLIP ViT-L/14───────▶ hidden_states[mm_vision_select_layer], "patch": CLS dropped
                                   (T, 576, 1024)                                     ◀ encode
           ─mm_projector────────▶ (T, 24, 24, D) ─avg pool 2 (mm_spatial_pool_stride)─▶ (T, 12, 12, D)
                                                                                      ◀ project
           ─layout──────────────▶ 144 tokens per frame, frames back to back, no separator ◀ visual_span

Video-XL pools *after* its projector, as LLaVA-OneVision does (vlc's ``model=videoxl_7b``, the
assembled backbone, pools before its random projector; this family is the released model itself).
The prompt is Video-XL's "qwen_1_5" conversation, system prompt included: the prefix before the
video is vst's sink, as Video-XL's ``beacon_skip_first`` (the index of the image token) makes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlc.backbone.base import Backbone, VisualSpan
from vlc.backbone.hf.loading import pretrained_kwargs, resolve_dtype
from vlc.model.prompt import PromptBuilder
from vlc.tokens import FrameTokens

VISION_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
BEACON_EMBED = "model.beacon_embed_tokens.weight"
BEACON_PROJ = re.compile(r"^model\.layers\.(\d+)\.self_attn\.beacon_([a-z]+)_proj\.(weight|bias)$")
IMAGES_ONLY = ("model.image_newline",)
# The compressor Video-XL's beacons belong to, as a config names it (configs/compressor/vst.yaml).
VST_TARGET = "vlc.compressors.vst.VisualSummarizationTokens"

# Video-XL's conversation template "qwen_1_5" (SeparatorStyle.CHATML): its prompt around one video.
PROMPT = {
    "prefix": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "question": "\n{question}{options}<|im_end|>\n<|im_start|>assistant\n",
    "answer": "{answer}<|im_end|>\n",
}

# Qwen2Config fields of Video-XL's config.json (the rest are LLaVA's mm_* and the beacon_* settings).
QWEN2_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "rope_theta", "tie_word_embeddings", "use_sliding_window", "sliding_window", "max_window_layers",
    "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
)
# OpenAI CLIP ViT-L/14-336 (Video-XL's mm_vision_tower), whose config.json the checkpoint does not
# carry; the widths, depth, patch and image size are read off the tensors, these are the rest.
CLIP_DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768}
CLIP_HEAD_DIM = 64  # every OpenAI CLIP tower: ViT-L 1024 / 16 heads


@dataclass
class VideoXLCheckpoint:
    """Video-XL's tensors sorted by the vlc part that holds them, each in that part's own key layout."""

    config: dict
    vision: dict[str, Tensor] = field(default_factory=dict)  # CLIPVisionModel: vision_model.*
    projector: dict[str, Tensor] = field(default_factory=dict)  # nn.Sequential: 0.weight, 2.bias, ...
    llm: dict[str, Tensor] = field(default_factory=dict)  # Qwen2ForCausalLM: model.*, lm_head.weight
    beacons: dict[str, Tensor] = field(default_factory=dict)  # vst: beacon_q.N.weight, ..., beacon_embed
    left_out: list[str] = field(default_factory=list)  # keys of the image path only


def read_state_dict(folder: Path) -> dict[str, Tensor]:
    """Every tensor of a saved checkpoint folder: *.safetensors (sharded or not), else *.bin."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        return state
    files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"videoxl: no *.safetensors or pytorch_model*.bin weights in {folder}")
    state = {}
    for f in files:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def read_checkpoint(folder: str | Path) -> VideoXLCheckpoint:
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"backbone.name_or_path: {folder} holds no config.json; point it at the Video-XL checkpoint folder "
            "(the one with config.json and the safetensors, e.g. VideoXL_weight_8 of the sy1998/Video_XL repo)"
        )
    config = json.loads((folder / "config.json").read_text())
    return split_state_dict(read_state_dict(folder), config, source=str(folder))


def split_state_dict(state: dict[str, Tensor], config: dict, source: str = "checkpoint") -> VideoXLCheckpoint:
    """Sort Video-XL's keys into vlc's parts; any key that belongs nowhere, or a beacon projection
    the config does not name, is an error naming it."""
    beacon_param = list(config.get("beacon_param") or [])
    shared = [p for p in beacon_param if p not in ("q", "k", "v")]
    if shared:
        raise ValueError(
            f"videoxl {source}: beacon_param {beacon_param} has {shared}; vlc's vst gives beacons their own "
            "q/k/v only and shares o_proj and the MLP with raw tokens (Video-XL's release uses [q, k, v])"
        )
    ckpt = VideoXLCheckpoint(config=config)
    unexpected = []
    for key, value in state.items():
        beacon = BEACON_PROJ.match(key)
        if key.startswith(VISION_PREFIX):
            ckpt.vision[key[len(VISION_PREFIX):]] = value
        elif key.startswith(PROJECTOR_PREFIX):
            ckpt.projector[key[len(PROJECTOR_PREFIX):]] = value
        elif key == BEACON_EMBED:
            ckpt.beacons["beacon_embed"] = value.reshape(-1)  # (1, D) embedding row → (D,)
        elif beacon and beacon.group(2) in beacon_param:
            layer, which, kind = beacon.groups()
            ckpt.beacons[f"beacon_{which}.{layer}.{kind}"] = value
        elif key in IMAGES_ONLY:
            ckpt.left_out.append(key)
        elif key.startswith(("model.vision_resampler.", "model.mm_")) or beacon:
            unexpected.append(key)
        elif key.startswith(("model.", "lm_head.")):
            ckpt.llm[key] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(
            f"videoxl {source}: unexpected keys {sorted(unexpected)[:8]}{' …' if len(unexpected) > 8 else ''} "
            f"({len(unexpected)}): neither the CLIP tower, mm_projector, the Qwen2 LM nor a beacon parameter "
            f"named by beacon_param={beacon_param}"
        )
    if "beacon_embed" not in ckpt.beacons:
        raise ValueError(f"videoxl {source}: missing key {BEACON_EMBED!r} (the beacon embedding)")
    return ckpt


def vst_state(ckpt: VideoXLCheckpoint, llm: nn.Module) -> dict[str, Tensor]:
    """The complete state dict of a vst compressor bound to ``llm`` (beacon_q/k/v per layer and
    beacon_embed). Projections Video-XL did not train separately (not in beacon_param) are the
    base ones, which is what Video-XL runs for them. A beacon tensor missing for a named one is an error."""
    layers = llm.get_decoder().layers
    beacon_param = list(ckpt.config.get("beacon_param") or [])
    state, missing = {"beacon_embed": ckpt.beacons["beacon_embed"]}, []
    for i, layer in enumerate(layers):
        for which in ("q", "k", "v"):
            base = getattr(layer.self_attn, f"{which}_proj")
            for kind in ("weight", "bias") if base.bias is not None else ("weight",):
                key = f"beacon_{which}.{i}.{kind}"
                if which not in beacon_param:
                    state[key] = getattr(base, kind).detach()
                elif key in ckpt.beacons:
                    state[key] = ckpt.beacons[key]
                else:
                    missing.append(f"model.layers.{i}.self_attn.beacon_{which}_proj.{kind}")
    extra = sorted(set(ckpt.beacons) - set(state))
    if missing or extra:
        raise ValueError(
            f"videoxl: beacon keys missing {missing[:6]} / for layers the LM does not have {extra[:6]} "
            f"(config: {len(layers)} layers, beacon_param={beacon_param})"
        )
    return state


def vst_settings(config: dict) -> dict:
    """Video-XL's own compression settings, in vst's terms (``compressor.window`` etc.)."""
    window = int(config.get("beacon_window", 1440))
    stride = int(config.get("beacon_stride", window))
    if stride != window:
        raise ValueError(f"videoxl: beacon_stride={stride} != beacon_window={window}; vst runs non-overlapping windows")
    if config.get("beacon_pos", "interleave") != "interleave":
        raise ValueError(f"videoxl: beacon_pos={config.get('beacon_pos')!r}; vst places beacons by interleaving only")
    ratios = [int(r) for r in config.get("beacon_ratio", [2, 4, 8])]
    return {"window": window, "ratios": ratios, "ratio": max(ratios)}


def build_projector(ckpt: VideoXLCheckpoint, dtype: torch.dtype) -> nn.Module:
    """LLaVA's ``build_vision_projector``: "linear" or "mlp{N}x_gelu", rebuilt from its tensors."""
    kind = ckpt.config.get("mm_projector_type", "linear")
    D, Dv = ckpt.config["hidden_size"], ckpt.config.get("mm_hidden_size")
    depth = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if kind == "linear":
        projector = nn.Linear(Dv, D)
    elif depth:
        parts = [nn.Linear(Dv, D)]
        for _ in range(1, int(depth.group(1))):
            parts += [nn.GELU(), nn.Linear(D, D)]
        projector = nn.Sequential(*parts)
    else:
        raise ValueError(f"videoxl: mm_projector_type={kind!r}; vlc reads 'linear' and 'mlp<N>x_gelu'")
    _load_exactly(projector, ckpt.projector, PROJECTOR_PREFIX)
    return projector.to(dtype)


def clip_config(ckpt: VideoXLCheckpoint, overrides: dict | None = None):
    """The CLIP tower's config, read off its tensors (width, depth, MLP width, patch and image size)."""
    from transformers import CLIPVisionConfig

    v = ckpt.vision
    try:
        patch = v["vision_model.embeddings.patch_embedding.weight"]  # (hidden, 3, p, p)
        positions = v["vision_model.embeddings.position_embedding.weight"].shape[0]  # grid² + CLS
        fc1 = v["vision_model.encoder.layers.0.mlp.fc1.weight"]  # (intermediate, hidden)
    except KeyError as err:
        raise ValueError(f"videoxl: missing key {VISION_PREFIX}{err.args[0]} of the CLIP vision tower") from err
    layers = {int(k.split(".")[3]) for k in v if k.startswith("vision_model.encoder.layers.")}
    side = round((positions - 1) ** 0.5)
    kw = dict(
        CLIP_DEFAULTS, hidden_size=patch.shape[0], patch_size=patch.shape[-1], image_size=side * patch.shape[-1],
        intermediate_size=fc1.shape[0], num_hidden_layers=len(layers),
        num_attention_heads=max(1, patch.shape[0] // CLIP_HEAD_DIM),
    )
    kw.update(overrides or {})
    return CLIPVisionConfig(**kw)


def _load_exactly(module: nn.Module, state: dict[str, Tensor], prefix: str) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"videoxl: missing keys {[prefix + k for k in result.missing_keys]}, "
            f"unexpected keys {[prefix + k for k in result.unexpected_keys]}"
        )


def _check_loaded(info: dict, prefix: str, part: str) -> None:
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = sorted(str(m) for m in info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"videoxl: the {part} does not match the checkpoint: missing keys {[prefix + k for k in missing][:8]}, "
            f"unexpected keys {[prefix + k for k in unexpected][:8]}, shape mismatches {mismatched[:4]}"
        )


class VideoXLBackbone(Backbone):
    """Video-XL's released model as a vlc Backbone (encoder CLIP, projector MLP, llm Qwen2).

    ``pretrained_compressor_state[VST_TARGET]`` holds Video-XL's beacons in vst's key layout; the
    model loads them into ``compressor=vst`` once it is bound to ``llm`` (``load_beacons`` does the
    same by hand). ``vst_settings`` holds Video-XL's window and ratios.
    """

    family = "videoxl"

    def __init__(self, encoder, projector, llm, tokenizer, image_processor, ckpt: VideoXLCheckpoint,
                 frames_per_pass: int = 64):
        super().__init__()
        if frames_per_pass < 1:
            raise ValueError(
                f"backbone.frames_per_pass={frames_per_pass}; frames through the vision tower at once, >= 1"
            )
        config = ckpt.config
        self.encoder, self.projector, self.llm = encoder, projector, llm
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_processor = image_processor
        self.prompt_template = dict(PROMPT)
        self.prompt = PromptBuilder(self.tokenizer, **self.prompt_template)
        self.frames_per_pass = int(frames_per_pass)
        self.select_layer = int(config.get("mm_vision_select_layer", -2))
        self.select_feature = config.get("mm_vision_select_feature", "patch")
        if self.select_feature != "patch":  # "cls_patch" would put the CLS token on the pooling grid
            raise ValueError(
                f"videoxl: mm_vision_select_feature={self.select_feature!r}; Video-XL's video path reads 'patch'"
            )
        self.pool_stride = int(config.get("mm_spatial_pool_stride", 2))
        self.pool_mode = config.get("mm_spatial_pool_mode", "average")
        if self.pool_mode not in ("average", "max"):
            raise ValueError(f"videoxl: mm_spatial_pool_mode={self.pool_mode!r}; Video-XL pools 'average' or 'max'")
        vision = encoder.config
        self.patch_size = vision.patch_size
        side = vision.image_size // vision.patch_size
        self.grid = (side, side)  # 24 x 24 for CLIP-L/14 at 336 px
        self.tokens_per_frame = side * side
        self.vision_dim = vision.hidden_size
        self.hidden_size = config["hidden_size"]
        self.pixel_std = tuple(float(s) for s in image_processor.image_std)
        self.vst_settings = vst_settings(config)
        self.pretrained_compressor_state = {VST_TARGET: vst_state(ckpt, llm)}
        self.left_out = list(ckpt.left_out)
        self.config_json = dict(config)

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype="bfloat16", attn_implementation="auto",
                        frames_per_pass: int = 64, vision_config: dict | None = None):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

        kwargs = pretrained_kwargs(dtype, attn_implementation)
        folder = Path(str(name_or_path)).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"backbone.name_or_path: no Video-XL checkpoint folder at {folder} (videoxl reads a local folder: "
                "download the checkpoint first, e.g. folder VideoXL_weight_8 of the sy1998/Video_XL repo)"
            )
        ckpt = read_checkpoint(folder)
        config = ckpt.config

        # rope_scaling is never passed: Video-XL's LlavaQwenForCausalLM sets it to None whatever the file says.
        text = Qwen2Config(**{k: config[k] for k in QWEN2_FIELDS if k in config})
        llm, info = Qwen2ForCausalLM.from_pretrained(None, config=text, state_dict=ckpt.llm,
                                                     output_loading_info=True, **kwargs)
        _check_loaded(info, "", "Qwen2 LM")
        encoder, info = CLIPVisionModel.from_pretrained(None, config=clip_config(ckpt, vision_config),
                                                        state_dict=ckpt.vision, output_loading_info=True, **kwargs)
        # Older transformers named CLIPVisionModel's keys vision_model.*; report them as the file does.
        named_inside = not any(k.startswith("vision_model.") for k in encoder.state_dict())
        _check_loaded(info, VISION_PREFIX + ("vision_model." if named_inside else ""), "CLIP vision tower")
        projector = build_projector(ckpt, resolve_dtype(dtype))

        if (folder / "preprocessor_config.json").is_file():
            image_processor = CLIPImageProcessor.from_pretrained(str(folder))
        else:  # the tower's own processor (CLIPImageProcessor of clip-vit-large-patch14-336): resize, crop
            size = encoder.config.image_size
            image_processor = CLIPImageProcessor(size={"shortest_edge": size},
                                                 crop_size={"height": size, "width": size})
        tokenizer = AutoTokenizer.from_pretrained(str(folder), config=text)  # not config.json: no llava_qwen class
        return cls(encoder.eval(), projector, llm.eval(), tokenizer, image_processor, ckpt, frames_per_pass)

    # ------------------------------------------------------------------ the video path

    @property
    def llm_tokens_per_frame(self) -> int:
        h, w = self.pooled_grid(self.grid)
        return h * w

    def pooled_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid[0] // self.pool_stride, grid[1] // self.pool_stride  # avg_pool2d floors, as get_2dPool

    def encode(self, pixels: Tensor, frame_mask: Tensor, times: Tensor) -> tuple[FrameTokens, Tensor]:
        if pixels.dtype != torch.uint8:
            raise TypeError(f"videoxl.encode: frames must be uint8 (B, T, 3, H, W), got {pixels.dtype}")
        B, T = pixels.shape[:2]
        x = self.image_processor(images=list(pixels.flatten(0, 1)), return_tensors="pt")["pixel_values"]
        x = x.to(pixels.device)  # (B*T, 3, S, S)
        dtype = next(self.encoder.parameters()).dtype
        parts = []
        for chunk in x.split(self.frames_per_pass):
            out = self.encoder(chunk.to(dtype), output_hidden_states=True, return_dict=True)
            parts.append(out.hidden_states[self.select_layer][:, 1:])  # "patch": the CLS token dropped
        tokens = torch.cat(parts).reshape(B, T, self.tokens_per_frame, -1)
        mask = frame_mask.bool()[:, :, None].expand(B, T, self.tokens_per_frame)
        covered = x[..., : self.grid[0] * self.patch_size, : self.grid[1] * self.patch_size]
        return FrameTokens(tokens, mask, times, self.grid), covered.reshape(B, T, *covered.shape[1:])

    def project(self, ft: FrameTokens) -> FrameTokens:
        x = self.projector(ft.tokens)  # (B, T, N, D)
        if ft.grid is None:
            return ft.replace(tokens=x)
        B, T, _, D = x.shape
        (h, w), size = ft.grid, self.pooled_grid(ft.grid)
        grid = x.reshape(B * T, h, w, D).permute(0, 3, 1, 2)  # (B*T, D, h, w), as get_2dPool lays it out
        pool = F.avg_pool2d if self.pool_mode == "average" else F.max_pool2d
        tokens = pool(grid, self.pool_stride).permute(0, 2, 3, 1).reshape(B, T, size[0] * size[1], D)
        mask = ft.token_mask.reshape(B * T, 1, h, w).to(x.dtype)
        mask = F.max_pool2d(mask, self.pool_stride).reshape(B, T, -1) > 0  # real if any patch under it was
        return FrameTokens(tokens, mask, ft.times, size)

    def visual_span(self, ft: FrameTokens, closing: bool = True) -> VisualSpan:
        """Every real token, frame after frame, nothing between or after ("unires" flattens a video)."""
        B, D = ft.tokens.shape[0], ft.tokens.shape[-1]
        rows = [ft.tokens[b][ft.token_mask[b]] for b in range(B)]
        length = max(1, max(r.shape[0] for r in rows))
        embeds = ft.tokens.new_zeros(B, length, D)
        mask = torch.zeros(B, length, dtype=torch.long, device=ft.tokens.device)
        for b, r in enumerate(rows):
            embeds[b, : r.shape[0]], mask[b, : r.shape[0]] = r, 1
        return VisualSpan(embeds, mask)


def load_beacons(vst: nn.Module, backbone: VideoXLBackbone) -> None:
    """Put Video-XL's beacons into a vst compressor already bound to ``backbone.llm``; every key
    must match (a vst built for another LLM is an error)."""
    vst.load_state_dict(backbone.pretrained_compressor_state[VST_TARGET], strict=True)
