"""What the pipeline needs of a video LLM, whichever way it was built.

A ``Backbone`` turns frames into the LLM's visual span, in the model's own layout, and holds the
LLM that reads it. Two kinds implement it: the assembled one (a timm encoder, vlc's MLP projector
and any Hugging Face causal LM; ``vlc.backbone.assembled``) and the pretrained video LLMs loaded
through transformers' own classes (``vlc.backbone.hf``).

The pipeline calls, in order::

    ft, pixels = backbone.encode(frames, frame_mask, times)   # FrameTokens at vision width
    ft = compressor(ft, ...)                                  # compressors that sit on "encoder"
    ft = backbone.project(ft)                                 # FrameTokens at LLM width
    ft = compressor(ft, ...)                                  # compressors that sit on "projected"
    span = backbone.visual_span(ft)                           # (B, L, D) + mask [+ positions]

then prefills ``prefix | span`` through ``backbone.llm`` and continues the question and answer
from that cache. A compressor that sits on "projector" replaces ``project``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from torch import Tensor, nn

from vlc.tokens import FrameTokens


@dataclass
class VisualSpan:
    """The visual part of the prompt, right-padded.

    embeds:    (B, L, D) what the LLM reads for the video (frame tokens and any layout tokens the
               model puts between them: newlines, time markers, separators).
    mask:      (B, L) long, 1 for real entries.
    positions: None for 1-D RoPE models (positions simply count real entries); (3, B, L) for
               M-RoPE models (Qwen2-VL family: temporal, height, width sections), counted from 0
               at the first visual entry — the pipeline shifts them past the prefix.
    """

    embeds: Tensor
    mask: Tensor
    positions: Tensor | None = None


class Backbone(nn.Module):
    """The interface; see the module docstring. Attributes every backbone sets:

    tokenizer:        a Hugging Face tokenizer (``pad_token_id`` and ``eos_token_id`` set).
    llm:              a causal LM: ``llm(inputs_embeds=, attention_mask=, position_ids=,
                      cache= (or past_key_values=), use_cache=, logits_to_keep=)`` returns ``.logits``, and
                      ``llm.get_decoder()`` has ``.layers`` and ``.rotary_emb`` (cache compressors
                      such as vst drive the layers themselves).
    prompt:           a ``vlc.model.prompt.PromptBuilder`` holding the model's chat template.
    vision_dim:       width of ``encode``'s tokens.
    hidden_size:      the LLM width (``project``'s output).
    tokens_per_frame: tokens per frame out of ``encode``.
    pixel_std:        the per-channel std ``encode`` normalised the pixels with.
    pretrained_compressor_state: a released checkpoint's own weights for a compressor, by the
                      ``_target_`` that builds it (Video-XL's beacons for vst); the model loads them
                      after ``bind``. Empty for most backbones.
    """

    tokenizer: object
    llm: nn.Module
    prompt: object
    vision_dim: int
    hidden_size: int
    tokens_per_frame: int
    pixel_std: tuple[float, float, float]
    pretrained_compressor_state: Mapping[str, Mapping[str, Tensor]] = MappingProxyType({})

    # Whether a cache compressor may have the video encoded a chunk of frames at a time. A backbone
    # whose layout spans chunks (M-RoPE positions counted from the video's first frame, separators
    # between frames) says False, and the whole video is encoded at once.
    streams: bool = True

    @property
    def llm_tokens_per_frame(self) -> int:
        """Visual tokens one frame puts into the LLM with no compressor (what vst's window counts)."""
        return self.tokens_per_frame

    def encode(self, pixels: Tensor, frame_mask: Tensor, times: Tensor) -> tuple[FrameTokens, Tensor]:
        """uint8 frames (B, T, 3, H, W) → (FrameTokens (B, T, N, vision_dim), normalised pixels
        (B, T, 3, S, S)). Padded frames (frame_mask False) are masked out."""
        raise NotImplementedError

    def project(self, ft: FrameTokens) -> FrameTokens:
        """(B, T, N, vision_dim) → (B, T, N', hidden_size): the projector, and any pooling the
        model itself does after it (LLaVA-OneVision's 2×2 bilinear pool)."""
        raise NotImplementedError

    def visual_span(self, ft: FrameTokens, closing: bool = True) -> VisualSpan:
        """Projected FrameTokens → the visual span in the model's native layout. ``closing=False``
        leaves out what the model writes once after the whole video (LLaVA-OneVision's newline):
        a streamed video's chunks but the last."""
        raise NotImplementedError

    def set_grad_checkpointing(self) -> None:
        """Recompute the LLM's decoder layers in backward (and the vision tower's, where it can)."""
        from vlc.backbone.llm import enable_activation_checkpointing

        enable_activation_checkpointing(self.llm)

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids (...,) → LLM input embeddings (..., hidden_size)."""
        return self.llm.get_input_embeddings()(ids)
