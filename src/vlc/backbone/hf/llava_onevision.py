"""`family: llava_onevision`: LLaVA-OneVision (SigLIP + 2-layer MLP + Qwen2) through transformers'
``LlavaOnevisionForConditionalGeneration`` and its processor, in the model's own video layout.

The model's video path (``LlavaOnevisionModel.get_video_features``), and where vlc cuts it:

    frames ─video processor─▶ (T, 3, 384, 384)                     resize, rescale, normalise
           ─SigLIP─────────▶ hidden_states[vision_feature_layer]   (T, 729, 1152)   ◀ encode
           ─projector───────▶ (T, 27, 27, D) ─2×2 bilinear─▶ (T, 14, 14, D)          ◀ project
           ─layout──────────▶ all frames' 196 tokens, then ONE image_newline         ◀ visual_span

so a compressor on "encoder" features sees the 27 × 27 SigLIP grid, one on "projected" features
the 14 × 14 grid at LLM width: the tokens that reach the LLM. The newline is a learnt row of the
model (not a vocabulary token), written once after the last frame, as the model does for video.

The pooling is the model's own ``apply_pooling``: bilinear resize to ceil(h/2) × ceil(w/2) of
whatever grid arrives (27 → 14 natively; a compressor that changed the grid gets it halved again).
A pooled cell is real when any patch it interpolates from with non-zero weight was real. With no
grid (after a Q-Former) nothing is pooled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlc.backbone.base import Backbone, VisualSpan
from vlc.backbone.hf.loading import causal_lm_over, pretrained_kwargs, prompt_from_chat_template, resolve_source
from vlc.model.prompt import PromptBuilder
from vlc.tokens import FrameTokens


class LlavaProjector(nn.Module):
    """The model's ``multi_modal_projector`` together with its ``image_newline`` (and, for models that
    pool before projecting, its ``vision_resampler``): the learnt parts between the vision tower and
    the language model, frozen or trained together (``freeze.projector``). All are the VLM's own
    objects, not copies; ``forward`` is the projector alone (the pooling is the Backbone's ``project``)."""

    def __init__(self, multi_modal_projector: nn.Module, image_newline: nn.Parameter | None,
                 resampler: nn.Module | None = None):
        super().__init__()
        self.multi_modal_projector = multi_modal_projector
        self.image_newline = image_newline  # (D,) or None
        self.resampler = resampler

    def forward(self, x: Tensor) -> Tensor:  # (..., Dv) → (..., D)
        return self.multi_modal_projector(x)


class LlavaOnevisionBackbone(Backbone):
    """LLaVA-OneVision as a vlc Backbone.

    Parts (shared with ``hf_model``, the loaded ``LlavaOnevisionForConditionalGeneration``):
    ``encoder`` the SigLIP tower, ``projector`` the MLP + newline, ``llm`` the Qwen2 causal LM.

    frames_per_pass: frames through the vision tower at once (memory, not numbers: every frame is
                     encoded on its own).
    """

    model_class = "LlavaOnevisionForConditionalGeneration"
    family = "llava_onevision"

    def __init__(self, model, processor, frames_per_pass: int = 64):
        super().__init__()
        if frames_per_pass < 1:
            raise ValueError(
                f"backbone.frames_per_pass={frames_per_pass}; frames through the vision tower at once, >= 1"
            )
        config = model.config
        self.__dict__["hf_model"] = model  # not a submodule: its parts are registered below, once
        self.__dict__["processor"] = processor
        self.video_processor = processor.video_processor
        self.encoder = model.model.vision_tower
        self.projector = LlavaProjector(model.model.multi_modal_projector, getattr(model.model, "image_newline", None))
        self.llm = causal_lm_over(model.model.language_model, model.lm_head)
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.prompt_template = prompt_from_chat_template(processor, processor.video_token)
        self.prompt = PromptBuilder(self.tokenizer, **self.prompt_template)

        self.frames_per_pass = int(frames_per_pass)
        self.feature_layer = config.vision_feature_layer  # int or list of ints (concatenated)
        self.select_strategy = config.vision_feature_select_strategy  # "default" drops the first token
        vision = config.vision_config
        self.patch_size = vision.patch_size
        side = vision.image_size // vision.patch_size
        self.grid = (side, side)  # 27 x 27 for SigLIP at 384 px
        layers = 1 if isinstance(self.feature_layer, int) else len(self.feature_layer)
        self.vision_dim = vision.hidden_size * layers
        self.hidden_size = config.text_config.hidden_size
        self.tokens_per_frame = side * side
        self.pixel_std = tuple(float(s) for s in self.video_processor.image_std)
        self.video_token_id = config.video_token_id

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype="bfloat16", attn_implementation="auto", **options):
        import transformers

        kwargs = pretrained_kwargs(dtype, attn_implementation)
        source = resolve_source(name_or_path)
        model = getattr(transformers, cls.model_class).from_pretrained(source, **kwargs).eval()
        processor = transformers.AutoProcessor.from_pretrained(source)
        return cls(model, processor, **options)

    # ------------------------------------------------------------------ the video path

    @property
    def llm_tokens_per_frame(self) -> int:
        """Tokens per frame that reach the LLM with no compressor (196 for LLaVA-OneVision)."""
        h, w = self.pooled_grid(self.grid)
        return h * w

    @staticmethod
    def pooled_grid(grid: tuple[int, int]) -> tuple[int, int]:
        """The grid after the model's 2x2 bilinear pool (apply_pooling): each side halved, rounded up."""
        return math.ceil(grid[0] / 2), math.ceil(grid[1] / 2)

    def preprocess(self, frames: Tensor) -> Tensor:
        """uint8 (B, T, 3, H, W) → (B, T, 3, S, S) as the model's own video processor prepares them."""
        if frames.dtype != torch.uint8:
            raise TypeError(f"{self.family}.encode: frames must be uint8 (B, T, 3, H, W), got {frames.dtype}")
        out = self.video_processor(
            videos=list(frames), do_sample_frames=False, return_tensors="pt", device=str(frames.device)
        )
        return out["pixel_values_videos"].to(frames.device)

    def vision_features(self, pixels: Tensor) -> Tensor:
        """(F, 3, S, S) normalised → (F, N, Dv): the hidden state the model selects, with its strategy."""
        dtype = next(self.encoder.parameters()).dtype
        parts = []
        for chunk in pixels.split(self.frames_per_pass):
            out = self.encoder(chunk.to(dtype), output_hidden_states=self.feature_layer, return_dict=True)
            if isinstance(self.feature_layer, int):
                h = out.hidden_states[self.feature_layer]
            else:
                h = torch.cat([out.hidden_states[i] for i in self.feature_layer], dim=-1)
            parts.append(h[:, 1:] if self.select_strategy == "default" else h)
        return torch.cat(parts)

    def encode(self, pixels: Tensor, frame_mask: Tensor, times: Tensor) -> tuple[FrameTokens, Tensor]:
        B, T = pixels.shape[:2]
        x = self.preprocess(pixels)  # (B, T, 3, S, S)
        tokens = self.vision_features(x.flatten(0, 1))  # (B*T, N, Dv)
        if tokens.shape[1] != self.tokens_per_frame:
            raise ValueError(
                f"{self.family}: the vision tower gave {tokens.shape[1]} tokens per frame, the config's "
                f"{self.grid[0]}x{self.grid[1]} patch grid holds {self.tokens_per_frame}"
            )
        tokens = tokens.reshape(B, T, self.tokens_per_frame, -1)
        mask = frame_mask.bool()[:, :, None].expand(B, T, self.tokens_per_frame)
        # The patches read only the top-left grid * patch pixels (27 * 14 = 378 of 384): return those,
        # so pixel compressors (diffp) tile exactly what each token saw.
        covered = x[..., : self.grid[0] * self.patch_size, : self.grid[1] * self.patch_size]
        return FrameTokens(tokens, mask, times, self.grid), covered

    def project(self, ft: FrameTokens) -> FrameTokens:
        x = self.projector(ft.tokens)  # (B, T, N, D)
        if ft.grid is None:
            return ft.replace(tokens=x)
        B, T, _, D = x.shape
        (h, w), size = ft.grid, self.pooled_grid(ft.grid)
        grid = x.reshape(B * T, h, w, D).permute(0, 3, 1, 2)  # (B*T, D, h, w), as apply_pooling lays it out
        pooled = F.interpolate(grid, size=size, mode="bilinear")  # (B*T, D, h', w')
        tokens = pooled.permute(0, 2, 3, 1).reshape(B, T, size[0] * size[1], D)
        mask = ft.token_mask.reshape(B * T, 1, h, w).to(x.dtype)
        mask = F.interpolate(mask, size=size, mode="bilinear").reshape(B, T, -1) > 0
        return FrameTokens(tokens, mask, ft.times, size)

    def visual_span(self, ft: FrameTokens, closing: bool = True) -> VisualSpan:
        """Every real token, frame by frame, then the one newline after the last frame (``closing``;
        a streamed video's earlier chunks end without it)."""
        newline = self.projector.image_newline if closing else None  # (D,)
        D = ft.tokens.shape[-1]
        rows = []
        for b in range(ft.tokens.shape[0]):
            real = ft.tokens[b][ft.token_mask[b]]  # (L_b, D) in frame order
            rows.append(torch.cat([real, newline[None].to(real.dtype)]) if newline is not None else real)
        return _right_pad(rows, D, ft.tokens)


def _right_pad(rows: list[Tensor], D: int, like: Tensor) -> VisualSpan:
    length = max(1, max(r.shape[0] for r in rows))
    embeds = like.new_zeros(len(rows), length, D)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=like.device)
    for b, r in enumerate(rows):
        embeds[b, : r.shape[0]] = r
        mask[b, : r.shape[0]] = 1
    return VisualSpan(embeds, mask)
