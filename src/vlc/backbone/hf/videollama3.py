"""VideoLLaMA3 (``family: videollama3``) through ``VideoLlama3ForConditionalGeneration`` and its processor.

The model's own video layout, which ``encode → project → visual_span`` rebuild:

- the video processor resizes every frame with ``smart_resize`` under a pixel budget *per video*
  (its ``longest_edge`` divided by the frame count), cuts 14 px patches, one frame per temporal step;
- the vision model (SigLIP-style with 2-D RoPE) attends within each frame, and ends in a 2×2 bilinear
  downsample of the patch grid (``pixel_unshuffle``): (h/2)·(w/2) tokens per frame;
- the projector is a 2-layer GELU MLP; the LLM (Qwen2) uses ordinary 1-D RoPE;
- in the prompt each frame is ``Time {t:.1f}s:`` followed by its tokens, frames joined by ``,``;
- DiffFP, VideoLLaMA3's differential frame pruning, runs in its video processor
  (``use_token_compression``, on by default): a token stays where the mean |Δ| of its 28 px region's
  normalised pixels × 255 since the previous frame exceeds 0.1, the first frame whole, and a frame with
  none keeps its first token.

The encode/project split: ``encode`` is the vision model, downsample included (FrameTokens
(B, T, h/2·w/2, vision_dim) on grid (h/2, w/2), one entry per frame); ``project`` the MLP. vlc runs the
processor with its pruning off: ``compressor=none`` is the model with every token, and vlc's ``diffp``
on "encoder" with ``fallback: first`` is VideoLLaMA3's own DiffFP (pinned token for token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import AutoProcessor, VideoLlama3ForConditionalGeneration

from vlc.backbone.base import Backbone, VisualSpan
from vlc.backbone.hf.loading import causal_lm_over, pretrained_kwargs, prompt_from_chat_template, resolve_source
from vlc.model.prompt import PromptBuilder
from vlc.tokens import FrameTokens

TIME_FORMAT, FRAME_SEPARATOR = "Time {t:.1f}s:", ","


class VideoLLaMA3Backbone(Backbone):
    """VideoLLaMA3 as a vlc Backbone (module docstring). Parts (shared with ``hf_model``, the loaded
    ``VideoLlama3ForConditionalGeneration``): ``encoder`` the vision model, ``projector`` its MLP,
    ``llm`` the Qwen2 causal LM over its language model and head.

    frame_size, num_frames: the video ``tokens_per_frame`` is quoted for (the processor divides its pixel
                            budget over the frames, so tokens per frame fall as frames grow).
    """

    # Frames are joined by "," separators that a chunk boundary would drop: no streaming.
    streams = False

    family = "videollama3"

    def __init__(
        self,
        model: VideoLlama3ForConditionalGeneration,
        processor,
        frame_size: Sequence[int] = (448, 448),
        num_frames: int = 180,
    ) -> None:
        super().__init__()
        cfg = model.config
        self.__dict__["hf_model"] = model  # not a submodule: its parts are registered below, once
        self.__dict__["processor"] = processor
        self.encoder = model.model.vision_model
        self.projector = model.model.projector
        self.llm = causal_lm_over(model.model.language_model, model.lm_head)
        self.video_processor = processor.video_processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.merge = int(self.video_processor.merge_size)
        self.vision_dim, self.hidden_size = cfg.vision_config.hidden_size, cfg.text_config.hidden_size
        self.pixel_std = tuple(float(s) for s in self.video_processor.image_std)
        self.tokens_per_frame = self.tokens_per_video_frame(int(num_frames), *frame_size)
        self.prompt_template = prompt_from_chat_template(processor, processor.video_token)
        self.prompt = PromptBuilder(self.tokenizer, **self.prompt_template)
        self._marker_ids: dict[str, list[int]] = {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        dtype: str = "bfloat16",
        attn_implementation: str = "auto",
        frame_size: Sequence[int] = (448, 448),
        num_frames: int = 180,
    ) -> VideoLLaMA3Backbone:
        """A VideoLLaMA3 checkpoint in transformers' format (hub name or local folder) and its processor."""
        source = resolve_source(name_or_path)
        model = VideoLlama3ForConditionalGeneration.from_pretrained(
            source, **pretrained_kwargs(dtype, attn_implementation)
        )
        return cls(model.eval(), AutoProcessor.from_pretrained(source), frame_size, num_frames)

    @property
    def llm_tokens_per_frame(self) -> int:
        """LLM tokens per frame with no compressor (the same as ``tokens_per_frame``: no merge after encode)."""
        return self.tokens_per_frame

    def set_grad_checkpointing(self) -> None:
        super().set_grad_checkpointing()
        self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def tokens_per_video_frame(self, num_frames: int, height: int, width: int) -> int:
        """LLM tokens per frame of a ``num_frames`` video of (height, width) frames, before any pruning."""
        patches = self.video_processor.get_num_of_video_patches(num_frames, int(height), int(width), {})
        return int(patches) // num_frames // self.merge**2

    # ------------------------------------------------------------------ encode / project

    def encode(self, pixels: Tensor, frame_mask: Tensor, times: Tensor) -> tuple[FrameTokens, Tensor]:
        """uint8 (B, T, 3, H, W) → FrameTokens (B, T, h/2·w/2, vision_dim), and the frames as the vision
        model saw them (normalised, resized): (B, T, 3, 14h, 14w). Every sample is sized as a T-frame
        video (the processor's budget per video), padded frames masked out; the processor sizes a
        video by its own frame count, which is the same when every frame is real."""
        B, T = pixels.shape[:2]
        frame_mask = frame_mask.bool()
        if not frame_mask.any(1).all():
            raise ValueError("videollama3.encode: a sample has no real frame (frame_mask is all False)")
        inputs = self.video_processor(videos=list(pixels), return_tensors="pt", use_token_compression=False,
                                      return_metadata=False, device=str(pixels.device))
        patches = inputs["pixel_values_videos"].to(pixels.device)  # (B·T·h·w, 3·14·14)
        grid = inputs["video_grid_thw"].to(pixels.device)  # (B, 3): frames, patch rows, patch columns
        weight = self.encoder.embeddings.patch_embedding.weight
        feats = self.encoder(pixel_values=patches.to(weight.dtype), grid_thw=grid,
                             merge_sizes=inputs["video_merge_sizes"].to(pixels.device)).last_hidden_state
        m, p = self.merge, self.encoder.config.patch_size
        (h, w) = grid[0, 1:].tolist()
        tokens = feats.view(B, T, (h // m) * (w // m), -1)  # raster order of the downsampled grid
        token_mask = frame_mask[:, :, None].expand(B, T, tokens.shape[2]).clone()
        # The processor orders a frame's patches by (block row, block column, row in block, column in block).
        frames = patches.view(B, T, h // m, w // m, m, m, 3, p, p).permute(0, 1, 6, 2, 4, 7, 3, 5, 8)
        return FrameTokens(tokens, token_mask, times, (h // m, w // m)), frames.reshape(B, T, 3, h * p, w * p)

    def project(self, ft: FrameTokens) -> FrameTokens:
        """The MLP projector: (B, T, N, vision_dim) → (B, T, N, hidden)."""
        return ft.replace(tokens=self.projector(ft.tokens))

    # ------------------------------------------------------------------ the visual span

    def marker_ids(self, text: str) -> list[int]:
        if text not in self._marker_ids:
            self._marker_ids[text] = self.tokenizer(text, add_special_tokens=False).input_ids
        return self._marker_ids[text]

    def visual_span(self, ft: FrameTokens, closing: bool = True) -> VisualSpan:
        """``Time 0.0s:`` frame 0's kept tokens ``,Time 1.0s:`` frame 1's … over the frames with a kept
        token (a frame a compressor dropped whole loses its marker too); 1-D positions. Nothing
        follows the last frame, so ``closing`` changes nothing."""
        B, T, N, D = ft.tokens.shape
        kept = ft.frame_mask
        seqs = []
        for b in range(B):
            parts = []
            for t in range(T):
                if not kept[b, t]:
                    continue
                text = (FRAME_SEPARATOR if parts else "") + TIME_FORMAT.format(t=float(ft.times[b, t]))
                ids = torch.tensor(self.marker_ids(text), device=ft.tokens.device)
                parts += [self.embed(ids).to(ft.tokens.dtype), ft.tokens[b, t][ft.token_mask[b, t]]]
            seqs.append(torch.cat(parts))
        L = max(s.shape[0] for s in seqs)
        embeds = ft.tokens.new_zeros(B, L, D)
        mask = torch.zeros(B, L, dtype=torch.long, device=ft.tokens.device)
        for b, s in enumerate(seqs):
            embeds[b, : s.shape[0]], mask[b, : s.shape[0]] = s, 1
        return VisualSpan(embeds, mask)
