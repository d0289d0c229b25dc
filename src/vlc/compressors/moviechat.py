"""`compressor=moviechat`: MovieChat's short-term → long-term frame memory (Song et al., CVPR 2024).

Frames stream into a short-term buffer of ``short_len`` frames. When the buffer is full it is
consolidated: the most similar adjacent pair of frames is replaced by its average, again and
again, until ``merge_to`` frames remain; those move to the long-term memory and the buffer is
cleared. The long-term memory holds at most ``long_len`` frames. A learned table of
``num_base_pos`` frame positions, expanded hierarchically to ``num_base_pos²`` positions, is added
to the frames that reach the LLM; it is the only trainable part.

Details follow the public MovieChat code:
- similarity of two frames = mean of their token dot-product matrix, ``mean(A @ Bᵀ)``;
- merge = plain ``(a + b) / 2``, even when ``a`` is itself a merge (not a member-weighted mean);
  ``times`` of a merged frame is the mean of its members' times (vlc's contract);
- past ``long_len`` the oldest memory frames are dropped (the public code pops index 0 until the
  memory fits its position table), so the memory keeps the most recent part of a long video;
- global mode answers from the long-term memory only; vlc consolidates the frames left in the
  buffer at the end like a full buffer (MovieChat consolidates every fragment it reads, full or
  not), so no frame of the video is lost;
- breakpoint mode answers at ``breakpoint_time`` from [long-term memory, the un-merged short-term
  buffer, the current frame]; the current frame is also the buffer's last frame, as in MovieChat,
  which encodes it a second time. If these exceed the position table, the oldest buffer frames
  go first, then the oldest memory frames (the public code's order).

Tokens per frame (N) and the patch grid are unchanged. A merged token is real when it is real in
either frame (token masks are OR-ed), so pruned tokens of an earlier stage are kept as masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlc.compressors.base import Compressor, check_settings, is_int, is_number, show
from vlc.tokens import FrameTokens


@dataclass
class Frames:
    """A run of frames in memory, oldest first. time_sum / count is each frame's mean time."""

    tokens: Tensor  # (S, N, D)
    mask: Tensor  # (S, N) bool
    time_sum: Tensor  # (S,) sum of member timestamps
    count: Tensor  # (S,) number of input frames merged into each frame

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, idx: slice) -> Frames:
        return Frames(self.tokens[idx], self.mask[idx], self.time_sum[idx], self.count[idx])

    @staticmethod
    def cat(runs: list[Frames]) -> Frames:
        return Frames(*(torch.cat([getattr(r, f) for r in runs]) for f in ("tokens", "mask", "time_sum", "count")))


def frame_similarity(tokens: Tensor) -> Tensor:
    """(S, N, D) → (S-1,) MovieChat's similarity of each adjacent pair: mean(A @ Bᵀ).

    The mean over all N×N token dot products equals the dot product of the two mean tokens,
    so it costs O(S·N·D) instead of O(S·N²·D). Computed in float32 so bf16 ties do not decide.
    """
    means = tokens.float().mean(1)  # (S, D)
    return (means[:-1] * means[1:]).sum(-1)


def consolidate(run: Frames, keep: int) -> Frames:
    """Replace the most similar adjacent pair by its average until ``keep`` frames remain."""
    while len(run) > keep:
        k = int(frame_similarity(run.tokens).argmax())  # first maximum, like list.index(max(...))
        merged = Frames(
            tokens=((run.tokens[k] + run.tokens[k + 1]) / 2)[None],
            mask=(run.mask[k] | run.mask[k + 1])[None],
            time_sum=(run.time_sum[k] + run.time_sum[k + 1])[None],
            count=(run.count[k] + run.count[k + 1])[None],
        )
        run = Frames.cat([run[:k], merged, run[k + 2 :]])
    return run


def _problems(short, merge, long_, base, alpha, mode, breakpoint_time) -> list[str]:
    if not all(is_int(x, 1) for x in (short, merge, long_, base)):
        return [f"compressor.short_len={show(short)}, merge_to={show(merge)}, long_len={show(long_)}, "
                f"num_base_pos={show(base)} (moviechat): integers >= 1"]
    out = []
    if merge > short:
        out.append(f"compressor.merge_to={merge} (moviechat): a full short-term buffer of short_len={short} frames "
                   f"is merged down to merge_to, so 1 <= merge_to <= short_len (MovieChat: short_len 18, merge_to 2)")
    if not merge <= long_ <= base**2:
        out.append(f"compressor.long_len={long_} (moviechat): must be in merge_to..num_base_pos² ({merge}..{base**2}), "
                   f"so that every memory frame has a position")
    if not (is_number(alpha) and 0 <= alpha < 1):
        out.append(f"compressor.alpha={show(alpha)} (moviechat): the position expansion weight, in [0, 1) "
                   f"(MovieChat: 0.01)")
    if mode not in ("global", "breakpoint"):
        out.append(f"compressor.mode={show(mode)} (moviechat): choose global or breakpoint")
    elif mode == "breakpoint" and breakpoint_time is None:
        out.append("compressor.mode=breakpoint (moviechat): needs breakpoint_time (seconds)")
    return out


class MovieChatMemory(Compressor):
    """MovieChat memory before the LLM: (B, T, N, D) → (B, T', N, D), T' = memory length.

    short_len:       frames in the short-term buffer before it is consolidated (paper: 18).
    merge_to:        frames a full buffer is merged down to (paper: 2).
    long_len:        long-term memory capacity in frames (paper: 256 = 16²); oldest dropped past it.
    num_base_pos:    learned frame positions, expanded to num_base_pos² (paper: 16 → 256).
    alpha:           hierarchical expansion weight (paper: 0.01).
    mode:            "global" (whole video) or "breakpoint" (answer at ``breakpoint_time``).
    breakpoint_time: seconds; a float for the batch, or one per sample (set the attribute per
                     question, as MovieChat-1K's breakpoint questions each carry a time).
    pos_init_std:    init std of the base positions (BERT's 0.02; MovieChat loads them from
                     Video-LLaMA's checkpoint).
    """
    placements = ("encoder", "projected")  # width-agnostic: before or after the projector

    keeps_frames = False

    def __init__(
        self,
        dim: int,
        short_len: int = 18,
        merge_to: int = 2,
        long_len: int = 256,
        num_base_pos: int = 16,
        alpha: float = 0.01,
        mode: str = "global",
        breakpoint_time: float | list[float] | None = None,
        pos_init_std: float = 0.02,
    ) -> None:
        super().__init__()
        check_settings(_problems(short_len, merge_to, long_len, num_base_pos, alpha, mode, breakpoint_time))
        self.short_len, self.merge_to, self.long_len = short_len, merge_to, long_len
        self.alpha, self.mode, self.breakpoint_time = alpha, mode, breakpoint_time
        self.frame_position = nn.Embedding(num_base_pos, dim)
        nn.init.normal_(self.frame_position.weight, std=pos_init_std)

    def position_table(self) -> Tensor:
        """(n², D) hierarchical positions from the n learned ones, rebuilt from the current weights.

        MovieChat: u_i = (p_i − α·p_0) / (1 − α) and position i·n + j = α·u_i + (1 − α)·u_j.
        Positions 0…n−1 equal p_0…p_{n−1} exactly; beyond them, i counts blocks of n frames and
        j the frame within its block. (The public code computes this table once at init, before
        the checkpoint is loaded; here it follows the loaded and trained weights.)
        """
        p = self.frame_position.weight  # (n, D)
        n, D = p.shape
        u = (p - self.alpha * p[:1]) / (1 - self.alpha)  # (n, D)
        q = self.alpha * u[:, None, :] + (1 - self.alpha) * u[None, :, :]  # (n, n, D): [i, j]
        return q.reshape(n * n, D)

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        B, T, N, D = x.tokens.shape
        valid = x.frame_mask  # (B, T): padded frames never enter memory
        if self.mode == "breakpoint":
            if self.breakpoint_time is None:
                raise ValueError("compressor.mode=breakpoint needs compressor.breakpoint_time (seconds)")
            breakpoints = torch.as_tensor(self.breakpoint_time, dtype=x.times.dtype).expand(B).tolist()
        outs = []
        for b in range(B):
            keep = valid[b]
            count = torch.ones(int(keep.sum()), dtype=torch.long, device=x.times.device)
            frames = Frames(x.tokens[b, keep], x.token_mask[b, keep], x.times[b, keep], count)
            if self.mode == "global":
                outs.append(self.global_memory(frames))
            else:
                outs.append(self.breakpoint_memory(frames, breakpoints[b]))

        positions = self.position_table()  # (n², D)
        T_out = max(1, max(len(o) for o in outs))
        tokens = x.tokens.new_zeros(B, T_out, N, D)
        mask = x.token_mask.new_zeros(B, T_out, N)
        times = x.times.new_zeros(B, T_out)
        for b, run in enumerate(outs):
            S = len(run)
            tokens[b, :S] = run.tokens + positions[:S, None, :].to(run.tokens.dtype)  # one position per frame
            mask[b, :S] = run.mask
            times[b, :S] = run.time_sum / run.count
        return FrameTokens(tokens, mask, times, x.grid)

    def stream(self, frames: Frames) -> tuple[Frames, Frames]:
        """Feed frames one by one; return (long-term memory, what is left in the buffer).

        A full buffer is consolidated when the next frame arrives, so the buffer returned holds
        1…short_len frames that were never merged (what breakpoint mode shows un-merged).
        """
        memory, start = frames[0:0], 0
        while len(frames) - start > self.short_len:
            merged = consolidate(frames[start : start + self.short_len], self.merge_to)
            memory = Frames.cat([memory, merged])[-self.long_len :]  # past the cap: drop the oldest
            start += self.short_len
        return memory, frames[start:]

    def global_memory(self, frames: Frames) -> Frames:
        memory, buffer = self.stream(frames)
        return Frames.cat([memory, consolidate(buffer, self.merge_to)])[-self.long_len :]

    def breakpoint_memory(self, frames: Frames, breakpoint_time: float) -> Frames:
        if len(frames) == 0:
            return frames
        now = int((frames.time_sum - breakpoint_time).abs().argmin())  # the frame shown at the breakpoint
        memory, buffer = self.stream(frames[: now + 1])
        current = frames[now : now + 1]
        capacity = self.frame_position.num_embeddings**2
        overflow = max(0, len(memory) + len(buffer) + 1 - capacity)
        drop_short = min(overflow, len(buffer))
        buffer, memory = buffer[drop_short:], memory[overflow - drop_short :]
        return Frames.cat([memory, buffer, current])
