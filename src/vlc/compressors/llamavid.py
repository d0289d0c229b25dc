"""`compressor=llamavid`: LLaMA-VID's two tokens per frame (Li et al., ECCV 2024).

Every frame becomes exactly two tokens:

- **context token**: text-conditioned queries attend to the frame's patches. In LLaMA-VID the
  queries come out of a BERT Q-Former that reads the user's instruction next to 32 learned queries
  (``text_q``, M × C). Then, single-head and with only a key projection,
      context = mean over queries of softmax(text_q · key(X)ᵀ / √C) · X
  (``token_generation`` in the public code), followed by its own value projection.
  Here the Q-Former is replaced by its cheapest stand-in: ``num_queries`` learned queries plus
  the question's projected mean embedding (the mean over the question's tokens, as the LLM embeds
  them), shared by all queries. The attention step is LLaMA-VID's.
- **content token**: the mean of the frame's patches (LLaMA-VID's "mean" compression for video,
  which pools each frame to one token).

Output: T' = T, N' = 2 (context first, as LLaMA-VID concatenates [context, content]), grid None.

The question enters through ``question = (embeds (B, Lq, question_dim), mask (B, Lq))``, its width
the LLM's: the model passes ``question_dim`` (its LLM hidden size) when the config leaves it null.
Built without one (outside a model), the question projection is an ``nn.LazyLinear`` that takes
its width from the first question; a checkpoint still loads into it (the state dict gives the
shape), but DDP/FSDP and parameter counts need it materialised first.

Because the context token depends on the question, the visual context must be rebuilt for every
question about the same video; see docs/question_awareness.md.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vlc.compressors.base import Compressor, is_int, show
from vlc.compressors.ops import masked_mean
from vlc.tokens import FrameTokens


class LLaMAVIDTokens(Compressor):
    """Two tokens per frame: a question-conditioned context token and a mean content token.

    dim:          width of the incoming features (encoder width); outputs keep it.
    question_dim: width of the question embeddings (the LLM hidden size; the model passes it).
                  None = take it from the first question (nn.LazyLinear).
    num_queries:  learned queries per frame (LLaMA-VID: 32).
    """

    reads_question = True
    keeps_grid = False

    def __init__(self, dim: int, question_dim: int | None = None, num_queries: int = 32) -> None:
        super().__init__()
        if not is_int(num_queries, 1):
            raise ValueError(f"compressor.num_queries={show(num_queries)} (llamavid): an integer >= 1")
        # std 0.02: BERT's initializer_range, which LLaMA-VID uses for its query tokens.
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.question_proj = nn.Linear(question_dim, dim) if question_dim is not None else nn.LazyLinear(dim)
        # No bias: a key bias adds the same q·b to every patch's score, which the softmax ignores
        # (it would never get a gradient). LLaMA-VID's vlm_att_key_projector has one.
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)  # LLaMA-VID's vlm_att_val_projector (there: to the LLM width)

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        if question is None:
            raise ValueError(
                "llamavid reads the question (reads_question = True) but got question=None; "
                "pass question=(embeds (B, Lq, D_llm), mask (B, Lq)) as the pipeline does"
            )
        B, T, N, D = x.tokens.shape
        embeds, q_mask = question
        q_mean = masked_mean(embeds, q_mask, dim=1)  # (B, D_llm)
        text_q = self.queries[None] + self.question_proj(q_mean.to(self.queries.dtype))[:, None]  # (B, M, D)

        patches = x.tokens  # (B, T, N, D)
        mask = x.token_mask  # (B, T, N)
        scores = torch.einsum("bmd,btnd->btmn", text_q, self.key(patches)) / math.sqrt(D)  # (B, T, M, N)
        # A frame without real tokens (padding) attends to all of them: finite, and masked below.
        frame_real = mask.any(-1)  # (B, T)
        keys_ok = (mask | ~frame_real[..., None])[:, :, None]  # (B, T, 1, N)
        attn = scores.masked_fill(~keys_ok, float("-inf")).softmax(-1)
        context = (attn @ patches).mean(2)  # (B, T, D): per query a mix of patches, then query mean
        context = self.value(context)

        content = masked_mean(patches, mask, dim=2)  # (B, T, D) mean of real patches

        tokens = torch.stack([context, content], 2)  # (B, T, 2, D)
        token_mask = frame_real[..., None].expand(B, T, 2).contiguous()
        return FrameTokens(tokens, token_mask, x.times, None)
