"""`compressor=qformer`: learned queries read a video out of its frame tokens.

Three modes, one per source:

- ``global`` (Video-LLaMA's video Q-Former): 32 queries cross-attend to the tokens of all frames
  at once → one output frame of 32 tokens.
- ``sliding`` (TimeChat): the same Q-Former over windows of 32 frames moved by 32 → one output
  frame of 32 tokens per window, ceil(T / stride) of them (96 frames → 96 tokens).
- ``slots`` (VTG-LLM's slot-based token compression): K = 256 learned slots, each a softmax over
  the **token** axis (every slot is a weighted mean of all tokens; slots do not compete for
  tokens, unlike Locatello et al.'s slot attention whose softmax runs over slots), one pass,
  no transformer → one output frame of 256 tokens.

In every mode a learned frame-position embedding (indexed by frame, shared by a frame's tokens) is
added first, as the three sources do; without it (``frame_pos: false``) the read-out is blind to
frame order. Every frame token enters directly (the sources first squeeze each frame to 32
tokens with a frozen BLIP-2 image Q-Former; vlc compresses encoder patches instead).

The Q-Former is written here in plain torch, pre-norm: per layer self-attention over the queries,
cross-attention from queries to visual tokens (padded/pruned tokens masked out of the keys), MLP.

``question_aware: true`` (``global`` and ``sliding``; VideoChat2 / InstructBLIP): the question's
tokens, as the LLM embeds them, are projected to the Q-Former width (``question_proj``, then a
LayerNorm like BERT's embedding norm) and join the queries in every layer's self-attention,
both ways (queries read the question, question tokens read the queries). Only the queries
cross-attend to the video and only the queries are returned, as InstructBLIP does. Two
simplifications: the question half passes through self-attention only (InstructBLIP gives it a
feed-forward of its own per layer), and it carries no position embedding (the LLM's input
embeddings have none; InstructBLIP's BERT adds its own). The compressor then sets
``reads_question = True`` and needs ``question=(embeds (B, Lq, question_dim), mask (B, Lq))``;
see docs/question_awareness.md for what that costs (no context reuse across questions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlc.compressors.base import Compressor, check_settings, is_int, show
from vlc.tokens import FrameTokens

# Rows of the frame-position table in each source: Video-LLaMA 32, TimeChat 96, VTG-LLM 96.
SOURCE_MAX_FRAMES = {"global": 32, "sliding": 96, "slots": 96}


def _problems(dim, mode, num_queries, depth, heads, window, stride, num_slots, max_frames, question_aware) -> list[str]:
    label = f"qformer, {mode}" if mode == "sliding" else "qformer"
    if mode not in SOURCE_MAX_FRAMES:
        return [f"compressor.mode={show(mode)} (qformer): choose one of {', '.join(sorted(SOURCE_MAX_FRAMES))}"]
    out = []
    for key, value in (("num_queries", num_queries), ("depth", depth), ("num_slots", num_slots)):
        if not is_int(value, 1):
            out.append(f"compressor.{key}={show(value)} ({label}): an integer >= 1")
    if max_frames is not None and not is_int(max_frames, 1):
        out.append(f"compressor.max_frames={show(max_frames)} ({label}): frame-position rows, an integer >= 1 or null")
    if mode != "slots":
        if not is_int(heads, 1):
            out.append(f"compressor.heads={show(heads)} ({label}): attention heads, an integer >= 1")
        elif dim % heads:
            divisors = [h for h in range(1, dim + 1) if dim % h == 0 and h <= 64]
            out.append(f"compressor.heads={heads} ({label}): must divide the encoder width {dim}; "
                       f"e.g. {', '.join(map(str, divisors[-4:]))}")
    if mode == "sliding":
        if not is_int(window, 1):
            out.append(f"compressor.window={show(window)} ({label}): frames per window, an integer >= 1 (TimeChat: 32)")
        elif not is_int(stride, 1, window):
            out.append(f"compressor.stride={show(stride)} ({label}): frames between window starts, in 1..window "
                       f"(window={window}), so that every frame is read (TimeChat: 32)")
    if question_aware and mode == "slots":
        out.append(f"compressor.question_aware=true ({label}): needs mode global or sliding "
                   f"(slots have no self-attention)")
    return out


class Attention(nn.Module):
    """Multi-head attention; ``mask`` (B, Lk) bool marks the keys that may be attended to."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        B, Lq, D = x.shape
        Lk, H = context.shape[1], self.heads
        q = self.q(x).reshape(B, Lq, H, D // H).transpose(1, 2)  # (B, H, Lq, Dh)
        k, v = self.kv(context).reshape(B, Lk, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, Lk, Dh) each
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Lk)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, Lq, Dh)
        return self.out(y.transpose(1, 2).reshape(B, Lq, D))


class QFormerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, queries: Tensor, visual: Tensor, visual_mask: Tensor, text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """queries (B, Q, D); visual (B, L, D) + mask (B, L); text (B, Lq, D) + mask (B, Lq) or None.
        Returns the updated queries and text (None stays None)."""
        Q = queries.shape[1]
        if text is None:
            q = self.norm_self(queries)
            queries = queries + self.self_attn(q, q)
        else:  # InstructBLIP: instruction tokens share the self-attention with the queries
            seq = torch.cat([queries, text], 1)  # (B, Q + Lq, D)
            keys_ok = torch.cat([torch.ones_like(text_mask[:, :1]).expand(-1, Q), text_mask], 1)
            s = self.norm_self(seq)
            seq = seq + self.self_attn(s, s, keys_ok)
            queries, text = seq[:, :Q], seq[:, Q:]
        queries = queries + self.cross_attn(self.norm_cross(queries), visual, visual_mask)
        return queries + self.mlp(self.norm_mlp(queries)), text


class QFormer(Compressor):
    """Learned queries (or slots) over frame tokens; see the module docstring for the modes.

    dim:         width of the incoming features (encoder width); outputs keep it.
    mode:        "global" | "sliding" | "slots".
    num_queries: queries per Q-Former read-out (Video-LLaMA, TimeChat: 32).
    depth:       Q-Former layers (Video-LLaMA's video Q-Former: 2).
    heads:       attention heads; must divide dim.
    mlp_ratio:   MLP width / dim (BERT: 4).
    window:      frames per window in sliding mode (TimeChat: 32).
    stride:      frames between window starts in sliding mode (TimeChat: 32).
    num_slots:   slots in slots mode (VTG-LLM: 256).
    frame_pos:   add a learned frame-position embedding (false = the order-blind ablation).
    max_frames:  rows of that embedding; None = the source's (SOURCE_MAX_FRAMES). A sample with
                 more real frames than rows reads the table linearly interpolated over its frames
                 (first frame → row 0, last → last row) instead of failing.
    question_aware: the question's tokens join the queries' self-attention (InstructBLIP);
                 global and sliding modes only. Sets ``reads_question`` on the instance.
    question_dim: width of the question embeddings (the LLM hidden size; the model passes it).
                 None = take it from the first question (nn.LazyLinear). Only used when question_aware.
    """

    keeps_grid = False
    keeps_frames = False

    def __init__(
        self,
        dim: int,
        mode: str = "global",
        num_queries: int = 32,
        depth: int = 2,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        window: int = 32,
        stride: int = 32,
        num_slots: int = 256,
        frame_pos: bool = True,
        max_frames: int | None = None,
        question_aware: bool = False,
        question_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_settings(_problems(dim, mode, num_queries, depth, heads, window, stride, num_slots, max_frames,
                                 question_aware))
        self.mode, self.window, self.stride = mode, window, stride
        # An instance attribute: the model hands the question only to compressors that ask for it.
        self.reads_question = question_aware
        self.max_frames = max_frames or SOURCE_MAX_FRAMES[mode]

        # The sources feed the video Q-Former LayerNorm-ed features (BLIP-2's ln_vision, then
        # Q-Former outputs); one norm here puts encoder features of any scale on that footing.
        self.norm_visual = nn.LayerNorm(dim)
        # std 0.02 like the queries (BERT's initializer_range); Video-LLaMA leaves nn.Embedding's
        # N(0, 1), VTG-LLM starts from zeros.
        self.frame_pos = nn.Parameter(torch.randn(self.max_frames, dim) * 0.02) if frame_pos else None
        if mode == "slots":
            # VTG-LLM: torch.randn(feature_size, num_slots).
            self.slots = nn.Parameter(torch.randn(dim, num_slots))
        else:
            self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
            self.layers = nn.ModuleList(QFormerLayer(dim, heads, mlp_ratio) for _ in range(depth))
            self.norm_out = nn.LayerNorm(dim)
        if question_aware:
            self.question_proj = nn.Linear(question_dim, dim) if question_dim is not None else nn.LazyLinear(dim)
            self.norm_question = nn.LayerNorm(dim)  # BERT normalises its token embeddings the same way

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        """question: (embeds (B, Lq, question_dim), mask (B, Lq)); read only when question_aware."""
        if self.reads_question and question is None:
            raise ValueError(
                "qformer with question_aware: true reads the question but got question=None; "
                "pass question=(embeds (B, Lq, D_llm), mask (B, Lq)) as VideoLLM._compress does"
            )
        B, T, N, D = x.tokens.shape
        visual = self.norm_visual(x.tokens)  # (B, T, N, D)
        if self.frame_pos is not None:
            visual = visual + self.frame_embedding(x.frame_mask)[:, :, None]  # one row per frame

        frames, inside = self.groups(T, x.tokens.device)  # (G, L) frame index, (G, L) bool
        G, L = frames.shape
        group_visual = visual[:, frames].reshape(B * G, L * N, D)  # (B·G, L·N, D)
        group_mask = (x.token_mask[:, frames] & inside[None, :, :, None]).reshape(B * G, L * N)
        real = group_mask.any(1)  # (B·G,) groups with at least one real token
        # A group of padding only attends to everything (finite output, masked out below).
        group_mask = group_mask | ~real[:, None]

        if self.mode == "slots":
            out = self.slot_readout(group_visual, group_mask)  # (B·G, K, D)
        else:
            out = self.queries.expand(B * G, -1, -1)  # (B·G, Q, D)
            text = text_mask = None
            if self.reads_question:
                embeds, q_mask = question
                text = self.norm_question(self.question_proj(embeds.to(out.dtype)))  # (B, Lq, D)
                text, text_mask = text.repeat_interleave(G, 0), q_mask.bool().repeat_interleave(G, 0)  # per group
            for layer in self.layers:
                out, text = layer(out, group_visual, group_mask, text, text_mask)
            out = self.norm_out(out)
        Q = out.shape[1]
        out = out.reshape(B, G, Q, D)

        # Time of an output frame: mean time of the real frames it covers.
        weight = (x.frame_mask[:, frames] & inside[None]).to(x.times.dtype)  # (B, G, L)
        group_times = x.times[:, frames]  # (B, G, L)
        count = weight.sum(-1)
        mean_real = (group_times * weight).sum(-1) / count.clamp(min=1)
        mean_any = (group_times * inside).sum(-1) / inside.sum(-1)
        times = torch.where(count > 0, mean_real, mean_any)  # (B, G)
        token_mask = real.reshape(B, G, 1).expand(B, G, Q)
        return FrameTokens(out, token_mask.contiguous(), times, None)

    def groups(self, T: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Frames read by each output frame: (G, L) indices (clamped) and (G, L) inside-the-video."""
        if self.mode == "sliding":
            # TimeChat: windows start at 0, stride, 2·stride, … < T; the last may run past the end.
            starts = torch.arange(0, T, self.stride, device=device)
            index = starts[:, None] + torch.arange(self.window, device=device)[None]  # (G, window)
        else:
            index = torch.arange(T, device=device)[None]  # (1, T): one group of all frames
        return index.clamp(max=T - 1), index < T

    def frame_embedding(self, frame_mask: Tensor) -> Tensor:
        """(B, T, D) frame-position rows; frame t of a sample with n real frames reads row t, or
        row t·(M−1)/(n−1) (linear interpolation) when n exceeds the M rows of the table."""
        B, T = frame_mask.shape
        M = self.max_frames
        n = frame_mask.sum(1).to(self.frame_pos.dtype)  # (B,) real frames, padding trailing
        scale = torch.where(n > M, (M - 1) / (n - 1).clamp(min=1), torch.ones_like(n))  # (B,)
        pos = torch.arange(T, device=frame_mask.device, dtype=n.dtype)[None] * scale[:, None]  # (B, T)
        pos = pos.clamp(max=M - 1)  # padded frames past the table read its last row (masked anyway)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=M - 1)
        frac = (pos - lo)[..., None]
        return self.frame_pos[lo] * (1 - frac) + self.frame_pos[hi] * frac

    def slot_readout(self, visual: Tensor, mask: Tensor) -> Tensor:
        """VTG-LLM's SlotSampler: weights = softmax over tokens of (tokens · slot); slot = Σ weights · tokens.

        visual (B, L, D), mask (B, L) → (B, K, D). VTG-LLM multiplies raw features by unit-normal
        slots; the 1/√D here keeps the logits O(1) so the softmax is not one-hot at init.
        """
        logits = visual @ self.slots / math.sqrt(visual.shape[-1])  # (B, L, K)
        logits = logits.masked_fill(~mask[..., None], float("-inf"))
        weights = logits.softmax(dim=1)  # over the token axis L: each slot's weights sum to 1
        return weights.transpose(1, 2) @ visual  # (B, K, D)
