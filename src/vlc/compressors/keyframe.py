"""`compressor=keyframe`: ShareGPT4Video's semantic keyframe selection (Chen et al., 2024).

Frames are walked in time order. The first frame is a keyframe; every later frame is compared
with the **last keyframe** (not with its neighbour, so a slow drift still adds a keyframe once it
has drifted far enough) and becomes a keyframe only when the cosine similarity of the two frame
features is below ``threshold``. ShareGPT4Video's public keyframe script uses 0.93 on CLIP-L/336
features (the CLS token of the last layer); vlc drops the CLS token, so a frame's feature here is
the mean of its real patch tokens.

Optional cap: when more than ``max_frames`` frames pass, the ``max_frames`` most novel ones stay
(lowest similarity to the keyframe before them; the first frame counts as the most novel, so it
always stays), still in time order. Ties keep the earlier frame.

Kept frames are compacted: T' = the most frames any sample of the batch kept, shorter samples are
padded with masked frames. Tokens and timestamps of a kept frame are passed on unchanged.

Differences from the source: ShareGPT4Video compares candidate frames every 2 s of the raw video
(``keyframe_interval``) and also appends the video's last frame; here every sampled frame is a
candidate and the last frame is not forced in. Parameter-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlc.compressors.base import Compressor, check_settings, is_int, is_number, show
from vlc.compressors.ops import masked_mean
from vlc.tokens import FrameTokens


class KeyframeSelection(Compressor):
    """Keep a frame when its pooled feature moved away from the last kept frame.

    threshold:  keep a frame when cos(feature, last keyframe's feature) < threshold
                (ShareGPT4Video: 0.93).
    max_frames: keep at most this many frames per video, the most novel ones; None = no cap.
    """
    placements = ("encoder", "projected")  # width-agnostic: before or after the projector

    keeps_frames = False

    def __init__(self, threshold: float = 0.93, max_frames: int | None = None) -> None:
        super().__init__()
        problems = []
        if not (is_number(threshold) and -1 <= threshold <= 1):
            problems.append(f"compressor.threshold={show(threshold)} (keyframe): a cosine similarity in [-1, 1] "
                            f"(ShareGPT4Video: 0.93)")
        if max_frames is not None and not is_int(max_frames, 1):
            problems.append(f"compressor.max_frames={show(max_frames)} (keyframe): an integer >= 1 or null")
        check_settings(problems)
        self.threshold, self.max_frames = threshold, max_frames

    def forward(
        self, x: FrameTokens, pixels: Tensor | None = None, question: tuple[Tensor, Tensor] | None = None
    ) -> FrameTokens:
        B, T, N, D = x.tokens.shape
        # Mean of each frame's real tokens (pruned tokens, e.g. by diffp, do not count).
        pooled = masked_mean(x.tokens, x.token_mask, dim=2)  # (B, T, D)
        unit = F.normalize(pooled.detach().float(), dim=-1)
        sim = (unit @ unit.transpose(1, 2)).cpu()  # (B, T, T) cosine similarity of every frame pair
        real = x.frame_mask.cpu()  # (B, T)

        kept = [self.select(sim[b], real[b]) for b in range(B)]
        return gather_frames(x, kept)

    def select(self, sim: Tensor, real: Tensor) -> list[int]:
        """Keyframe indices of one video, in time order. sim (T, T), real (T,) bool."""
        frames = [t for t in range(real.shape[0]) if real[t]]
        if not frames:
            return []
        # The decision for frame t depends on the keyframe before it, so this walk is sequential;
        # it runs over Python floats, which is cheap next to the encoder even for thousands of frames.
        sim = sim.tolist()
        kept, novelty = [frames[0]], [float("-inf")]  # the first frame is the most novel
        for t in frames[1:]:
            s = sim[kept[-1]][t]
            if s < self.threshold:
                kept.append(t)
                novelty.append(s)
        if self.max_frames is not None and len(kept) > self.max_frames:
            # Lowest similarity first; sorted() is stable, so ties keep the earlier frame.
            order = sorted(range(len(kept)), key=lambda i: novelty[i])[: self.max_frames]
            kept = [kept[i] for i in sorted(order)]
        return kept


def gather_frames(x: FrameTokens, kept: list[list[int]]) -> FrameTokens:
    """The frames ``kept[b]`` of each sample, compacted to T' = max kept; padding frames are masked."""
    B = x.tokens.shape[0]
    T2 = max(1, max(len(k) for k in kept))  # at least one (masked) frame, so shapes stay valid
    index = torch.zeros(B, T2, dtype=torch.long)
    real = torch.zeros(B, T2, dtype=torch.bool)
    for b, k in enumerate(kept):
        if k:
            # Padding slots repeat the last kept frame (masked below): no out-of-range index, and
            # padded times stay non-decreasing.
            index[b] = torch.tensor(k + [k[-1]] * (T2 - len(k)))
            real[b, : len(k)] = True
    index, real = index.to(x.tokens.device), real.to(x.tokens.device)
    rows = torch.arange(B, device=x.tokens.device)[:, None]
    tokens = x.tokens[rows, index]  # (B, T', N, D)
    token_mask = x.token_mask[rows, index] & real[..., None]  # (B, T', N)
    times = x.times[rows, index]  # (B, T')
    return FrameTokens(tokens, token_mask, times, x.grid)
