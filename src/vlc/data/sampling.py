"""Which frames of a video to decode.

Two policies, as in the video LLMs vlc compares:

- ``uniform_indices``: N frames spread over the whole clip, one per equal segment (its midpoint),
  so the first and last frames are never over-represented (LLaVA-NeXT-Video, Video-LLaMA).
- ``fps_indices``: frames at a fixed rate, with a cap that falls back to uniform subsampling
  (Video-XL, VideoLLaMA3).

Both return sorted frame indices into ``[0, num_total)``; a frame's timestamp is always
``index / native_fps`` seconds.
"""

from __future__ import annotations

import math

import numpy as np


def uniform_indices(num_total: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices at the midpoints of ``num_frames`` equal segments of the clip.

    Index k is ``floor((k + 0.5) * num_total / num_frames)``, in integer arithmetic so it is exact.
    When the clip is shorter than ``num_frames`` some frames repeat (e.g. 2 frames, 4 wanted →
    [0, 0, 1, 1]): the model always sees exactly ``num_frames`` frames, and the repeats carry
    repeated timestamps, so nothing downstream is misled about time.
    """
    if num_total < 1:
        raise ValueError(f"uniform_indices: num_total={num_total}, expected a video with at least 1 frame")
    if num_frames < 1:
        raise ValueError(f"uniform_indices: num_frames={num_frames}, expected at least 1")
    k = np.arange(num_frames, dtype=np.int64)
    return (2 * k + 1) * num_total // (2 * num_frames)  # (num_frames,)


def fps_indices(
    num_total: int, native_fps: float, target_fps: float, max_frames: int | None = None
) -> np.ndarray:
    """Indices of the frames nearest below ``0, 1/target_fps, 2/target_fps, …`` seconds.

    A target rate above the native one is capped at the native rate (every frame once) rather
    than repeating frames. If more than ``max_frames`` frames result, ``max_frames`` of them are
    kept by ``uniform_indices``, so the cap thins the clip evenly instead of truncating its end.
    """
    if num_total < 1:
        raise ValueError(f"fps_indices: num_total={num_total}, expected a video with at least 1 frame")
    if not native_fps > 0:
        raise ValueError(f"fps_indices: native_fps={native_fps}, expected > 0")
    if not target_fps > 0:
        raise ValueError(f"fps_indices: target_fps={target_fps}, expected > 0")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"fps_indices: max_frames={max_frames}, expected >= 1 or None")
    step = max(native_fps / target_fps, 1.0)  # native frames per sampled frame
    count = max(1, math.ceil(num_total / step - 1e-9))
    # The small epsilon keeps e.g. 3 * (10/3) from landing on 9.999… and flooring to 9.
    indices = np.floor(np.arange(count) * step + 1e-6).astype(np.int64)
    indices = np.minimum(indices, num_total - 1)  # (count,)
    if max_frames is not None and len(indices) > max_frames:
        indices = indices[uniform_indices(len(indices), max_frames)]
    return indices


def indices_in_window(
    num_total: int, native_fps: float, start: float | None = None, end: float | None = None
) -> tuple[int, int]:
    """The half-open index range ``[lo, hi)`` of frames whose timestamp lies in ``[start, end]``.

    ``None`` means the start / end of the video. A window that holds no frame timestamp (e.g.
    shorter than one frame period) still yields the first frame from its start on, so a sample
    with a tiny window is not silently dropped. Windows past the end clip to the last frame.
    """
    if num_total < 1:
        raise ValueError(f"indices_in_window: num_total={num_total}, expected at least 1 frame")
    if not native_fps > 0:
        raise ValueError(f"indices_in_window: native_fps={native_fps}, expected > 0")
    if start is not None and end is not None and end < start:
        raise ValueError(f"indices_in_window: end={end} < start={start}")
    lo = 0 if start is None else math.ceil(start * native_fps - 1e-6)
    hi = num_total if end is None else math.floor(end * native_fps + 1e-6) + 1
    lo = min(max(lo, 0), num_total - 1)
    hi = min(max(hi, lo + 1), num_total)
    return lo, hi


def frame_times(indices: np.ndarray, native_fps: float) -> np.ndarray:
    """(T,) float32 seconds of frame ``indices``: ``index / native_fps``, the frame's start time."""
    return (np.asarray(indices, dtype=np.float64) / native_fps).astype(np.float32)


def sample_indices(
    num_total: int,
    native_fps: float,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """Indices for exactly one of ``num_frames`` (uniform) or ``fps``, inside ``[start, end]``."""
    if (num_frames is None) == (fps is None):
        raise ValueError(
            f"give exactly one of num_frames (uniform sampling) or fps (rate sampling); "
            f"got num_frames={num_frames}, fps={fps}"
        )
    lo, hi = indices_in_window(num_total, native_fps, start, end)
    if num_frames is not None:
        return lo + uniform_indices(hi - lo, num_frames)
    return lo + fps_indices(hi - lo, native_fps, fps, max_frames)
