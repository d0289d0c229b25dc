"""Decoded frames → the frames the encoder sees: upright, at its size, in its aspect policy, still uint8.

Applied a few frames at a time as they are decoded (``chunk_size``), so a clip never exists at full
resolution in float32, nor even in uint8 all at once:

- rotation: the display matrix's, as players apply it (``Timeline.rotation``); decord applies it
  itself, PyAV does not, so PyAV's frames are turned here and both backends agree.
- aspect (``data.aspect``) when the frame's shape differs from the target's:
  ``pad``: the whole frame, scaled to fit, centred on the mean colour (``pad_color``), as
  LLaVA-1.5 / VideoLLaMA2's ``expand2square``; ``crop``: the short side scaled to the target and
  the centre cut out, as CLIP's image processor (and with it Video-XL, LLaVA-NeXT-Video) does;
  ``squash``: scaled to the target, aspect ignored. A square frame for a square target is the
  same under all three.
- resize: bilinear with antialiasing (no aliasing when downscaling 1080p to 336 px), on uint8,
  which differs from the float32 resize by rounding only (≤ 1 of 255).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ASPECTS = ("pad", "crop", "squash")

# The pad colour of LLaVA and VideoLLaMA2: their image processor's mean (CLIP's, 0.481 0.458 0.408) × 255.
CLIP_MEAN_RGB = (122, 116, 104)

# Pixels decoded at full size before they are resized: 16 MiB of RGB (5 frames of 720p, 2 of 1080p,
# 1 of 4K). decord holds several times a batch's pixels while it decodes one (296 MB for 16 frames of
# 720p, 116 MB for 4), and smaller batches cost it no more time.
CHUNK_BYTES = 16 * 2**20


def check_aspect(aspect: str) -> str:
    if aspect not in ASPECTS:
        raise ValueError(f"data.aspect={aspect!r}: expected one of {', '.join(ASPECTS)} "
                         f"(pad: whole frame on the mean colour; crop: centre; squash: stretch)")
    return aspect


def chunk_size(hw: tuple[int, int]) -> int:
    """Frames of size ``hw`` to decode before resizing them: ``CHUNK_BYTES`` of RGB, 1 to 32 frames."""
    return int(min(32, max(1, CHUNK_BYTES // max(1, 3 * hw[0] * hw[1]))))


def output_hw(display_hw: tuple[int, int], size: tuple[int, int] | None, aspect: str) -> tuple[int, int]:
    """(H, W) of the frames the encoder gets from frames shown at ``display_hw``.

    ``size=None`` keeps the video's scale: ``squash`` keeps the frame as it is, ``pad`` makes it a
    square of its long side, ``crop`` a square of its short side.
    """
    if size is not None:
        return int(size[0]), int(size[1])
    h, w = display_hw
    if aspect == "pad":
        return (max(h, w),) * 2
    if aspect == "crop":
        return (min(h, w),) * 2
    return h, w


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, h, w, 3) uint8, bilinear with antialiasing."""
    h, w = int(size[0]), int(size[1])
    if frames.shape[1:3] == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W), channels-last in memory: torch's fast uint8 kernel
    try:
        y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    except RuntimeError:  # a build without the uint8 kernel: the float path, same pixels up to rounding
        y = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous()


def fit_frames(
    frames: torch.Tensor,
    size: tuple[int, int] | None,
    aspect: str = "pad",
    rotation: int = 0,
    pad_color: tuple[int, int, int] = CLIP_MEAN_RGB,
) -> torch.Tensor:
    """(n, H, W, 3) uint8 as decoded → (n, h, w, 3) uint8: turned by ``rotation`` (degrees
    counter-clockwise), then fitted to ``size`` (or to the square ``output_hw`` gives) by ``aspect``."""
    if rotation % 360:
        frames = torch.rot90(frames, k=(rotation // 90) % 4, dims=(1, 2))
    H, W = frames.shape[1:3]
    h, w = output_hw((H, W), size, aspect)
    if (H, W) == (h, w):
        return frames.contiguous()
    if aspect == "squash" or H * w == W * h:  # same shape as the target: nothing to pad or crop
        return resize_frames(frames, (h, w))
    if aspect == "crop":
        scale = max(h / H, w / W)
        rh, rw = max(h, round(H * scale)), max(w, round(W * scale))
        y0, x0 = (rh - h) // 2, (rw - w) // 2
        return resize_frames(frames, (rh, rw))[:, y0 : y0 + h, x0 : x0 + w].contiguous()
    scale = min(h / H, w / W)
    rh, rw = min(h, max(1, round(H * scale))), min(w, max(1, round(W * scale)))
    out = torch.empty(frames.shape[0], h, w, 3, dtype=torch.uint8)
    out[:] = torch.tensor(pad_color, dtype=torch.uint8)
    y0, x0 = (h - rh) // 2, (w - rw) // 2
    out[:, y0 : y0 + rh, x0 : x0 + rw] = resize_frames(frames, (rh, rw))
    return out
