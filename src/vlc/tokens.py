"""The two shapes every part of vlc agrees on.

``FrameTokens`` is what flows between the vision encoder and the LLM: every pre-LLM compressor
maps one ``FrameTokens`` to another. ``Context`` is what the LLM prefill produces: the KV cache of
``prefix + visual`` that the question, the answer and generated tokens continue from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class FrameTokens:
    """Visual tokens grouped by frame.

    tokens:     (B, T, N, D) features
    token_mask: (B, T, N) bool, True where a token is real. Padded frames and pruned tokens are
                False; they never reach the LLM (prompt assembly flattens by this mask).
    times:      (B, T) float seconds: the timestamp of each frame (merged frames carry the mean).
    grid:       (h, w) with h * w == N while the tokens still lie on the patch grid, else None
                (e.g. after a Q-Former, whose outputs have no spatial layout).
    """

    tokens: Tensor
    token_mask: Tensor
    times: Tensor
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        B, T, N, _ = self.tokens.shape
        if self.token_mask.shape != (B, T, N):
            raise ValueError(f"token_mask shape {tuple(self.token_mask.shape)} != (B, T, N) = {(B, T, N)}")
        if self.times.shape != (B, T):
            raise ValueError(f"times shape {tuple(self.times.shape)} != (B, T) = {(B, T)}")
        if self.grid is not None and self.grid[0] * self.grid[1] != N:
            raise ValueError(f"grid {self.grid} does not hold N={N} tokens")

    @property
    def frame_mask(self) -> Tensor:  # (B, T) bool: frames with at least one real token
        return self.token_mask.any(-1)

    def num_tokens(self) -> Tensor:  # (B,) long: real tokens per sample
        return self.token_mask.sum((1, 2))

    def replace(self, **changes: Any) -> FrameTokens:
        return replace(self, **changes)


@dataclass
class Context:
    """The LLM's state after prefill of ``prefix + visual``, ready for continuation.

    cache:          a transformers ``Cache`` whose keys are already rotated for positions
                    0 … len-1 of each sample (left padding sits before position 0).
    attention_mask: (B, L) long, 1 for real cache entries, 0 for left padding.
    next_position:  (B,) long, the position id of the first continuation token.
    visual_tokens:  (B,) long, visual tokens that entered the LLM for this sample.
    """

    cache: Any
    attention_mask: Tensor
    next_position: Tensor
    visual_tokens: Tensor

    @property
    def length(self) -> int:  # cache entries per sample, padding included
        return self.attention_mask.shape[1]

    def kv_bytes(self) -> Tensor:
        """(B,) bytes held by the real (unpadded) cache entries of each sample."""
        per_token = 0
        for keys, values in iter_cache_layers(self.cache):
            per_token += keys.shape[1] * keys.shape[3] * keys.element_size()
            per_token += values.shape[1] * values.shape[3] * values.element_size()
        return self.attention_mask.sum(1).to(torch.long) * per_token


def iter_cache_layers(cache: Any):
    """Yield (keys, values) of shape (B, H_kv, L, Dh) for each layer of a transformers cache."""
    if hasattr(cache, "layers"):  # transformers >= 4.56 Cache with per-layer objects
        for layer in cache.layers:
            yield layer.keys, layer.values
    else:  # legacy tuple of tuples
        for keys, values in cache:
            yield keys, values


def format_seconds(t: float) -> str:
    """Seconds as the answer text writes them: one decimal, a second only where needed.

    4 fps (the default) puts frames at quarter seconds, which one decimal cannot write exactly
    (``f"{0.25:.1f}"`` is ``"0.2"``), so 0.25 → ``"0.25"`` while 2.5 → ``"2.5"`` and 4 → ``"4.0"``.
    """
    text = f"{float(t):.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
