"""The assembled backbone: a timm vision encoder, vlc's MLP projector and any Hugging Face causal
LM, with vlc's prompt layout (``model=tiny``, ``model=videoxl_7b``, …)."""

from __future__ import annotations

from torch import Tensor

from vlc.backbone.base import Backbone, VisualSpan
from vlc.backbone.encoder import VisionEncoder
from vlc.backbone.llm import build_llm
from vlc.backbone.projector import MLPProjector
from vlc.backbone.tokenizer import load_tokenizer
from vlc.model.prompt import PromptBuilder
from vlc.tokens import FrameTokens


class AssembledBackbone(Backbone):
    """encoder: ``VisionEncoder`` arguments; llm: ``build_llm`` arguments; tokenizer:
    ``load_tokenizer`` arguments; projector: ``MLPProjector`` extras; prompt: ``PromptBuilder``
    arguments."""

    def __init__(self, encoder: dict, llm: dict, tokenizer: dict | None = None, projector: dict | None = None,
                 prompt: dict | None = None) -> None:
        super().__init__()
        # Built in this order so a seeded random init draws the same numbers as it always has.
        self.tokenizer = load_tokenizer(**(tokenizer or {}))
        self.encoder = VisionEncoder(**encoder)
        self.llm = build_llm(**llm, vocab_size=len(self.tokenizer))
        self.hidden_size = int(self.llm.config.hidden_size)
        self.projector = MLPProjector(self.encoder.dim, self.hidden_size, **(projector or {}))
        self.prompt = PromptBuilder(self.tokenizer, **(prompt or {}))
        self.vision_dim = self.encoder.dim
        self.pixel_std = tuple(self.encoder.std.flatten().tolist())

    @property
    def tokens_per_frame(self) -> int:
        return self.encoder.tokens_per_frame

    def encode(self, pixels: Tensor, frame_mask: Tensor, times: Tensor) -> tuple[FrameTokens, Tensor]:
        return self.encoder(pixels, frame_mask, times)

    def project(self, ft: FrameTokens) -> FrameTokens:
        return ft.replace(tokens=self.projector(ft.tokens))  # (B, T, N, Dv) → (B, T, N, D)

    def visual_span(self, ft: FrameTokens, closing: bool = True) -> VisualSpan:  # nothing closes a video here
        embeds, mask = self.prompt.visual_span(ft.tokens, ft, self.llm.get_input_embeddings())
        return VisualSpan(embeds, mask)

    def set_grad_checkpointing(self) -> None:
        super().set_grad_checkpointing()
        self.encoder.set_grad_checkpointing(True)
