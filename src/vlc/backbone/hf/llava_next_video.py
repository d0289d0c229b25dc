"""`family: llava_next_video`: LLaVA-NeXT-Video (CLIP ViT-L/14-336 + 2-layer MLP + Vicuna-7B) through
transformers' ``LlavaNextVideoForConditionalGeneration`` and its processor, in its own video layout.

The model's video path (``LlavaNextVideoModel.get_video_features``), and where vlc cuts it:

    frames ─video processor─▶ (T, 3, 336, 336)                   shortest side 336, centre crop
           ─CLIP────────────▶ hidden_states[-2], CLS dropped     (T, 576, 1024)   ◀ encode
           ─vision_resampler▶ 2×2 average pool (spatial_pool_*)  (T, 144, 1024)
           ─projector───────▶ (T, 144, D)                                         ◀ project
           ─layout──────────▶ all frames' 144 tokens back to back, no newline     ◀ visual_span

Unlike LLaVA-OneVision, the pooling comes *before* the projector, at vision width: ``project`` is
the model's pool and then its MLP, so a compressor on "encoder" features sees the 24 × 24 CLIP
grid and one on "projected" features the 12 × 12 grid of LLM tokens. The pool is the model's own
module (average, max or conv by ``spatial_pool_mode``, stride ``spatial_pool_stride``, edges that
the stride does not divide dropped, as nn.AvgPool2d does); a pooled cell is real when any patch
under it was. ``image_newline`` is the model's, used for images only: a video gets none.
"""

from __future__ import annotations

import torch.nn.functional as F

from vlc.backbone.base import VisualSpan
from vlc.backbone.hf.llava_onevision import LlavaOnevisionBackbone, LlavaProjector, _right_pad
from vlc.tokens import FrameTokens


class LlavaNextVideoBackbone(LlavaOnevisionBackbone):
    """LLaVA-NeXT-Video as a vlc Backbone: ``encoder`` the CLIP tower, ``projector`` the spatial pool
    (``projector.resampler``) + MLP (+ the images' newline), ``llm`` the Llama causal LM."""

    model_class = "LlavaNextVideoForConditionalGeneration"
    family = "llava_next_video"

    def __init__(self, model, processor, frames_per_pass: int = 64):
        super().__init__(model, processor, frames_per_pass)
        self.projector = LlavaProjector(
            model.model.multi_modal_projector, model.model.image_newline, resampler=model.model.vision_resampler
        )
        self.pool_stride = model.config.spatial_pool_stride

    def pooled_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid[0] // self.pool_stride, grid[1] // self.pool_stride  # nn.AvgPool2d floors

    def project(self, ft: FrameTokens) -> FrameTokens:
        if ft.grid is None:
            return ft.replace(tokens=self.projector(ft.tokens))
        B, T, _, Dv = ft.tokens.shape
        (h, w), size = ft.grid, self.pooled_grid(ft.grid)
        grid = ft.tokens.reshape(B * T, h, w, Dv).permute(0, 3, 1, 2)  # (B*T, Dv, h, w), as the pooler lays it out
        pooled = self.projector.resampler.pool(grid)  # (B*T, Dv', h', w')
        tokens = self.projector(pooled.flatten(2).transpose(1, 2)).reshape(B, T, size[0] * size[1], -1)
        mask = ft.token_mask.reshape(B * T, 1, h, w).to(ft.tokens.dtype)
        mask = F.max_pool2d(mask, self.pool_stride).reshape(B, T, -1) > 0
        return FrameTokens(tokens, mask, ft.times, size)

    def visual_span(self, ft: FrameTokens, closing: bool = True) -> VisualSpan:
        """Every real token, frame after frame; the model writes nothing between or after the frames."""
        rows = [ft.tokens[b][ft.token_mask[b]] for b in range(ft.tokens.shape[0])]
        return _right_pad(rows, ft.tokens.shape[-1], ft.tokens)
