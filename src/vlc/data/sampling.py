"""Which frames of a video to decode, chosen by the frames' true presentation times.

Two policies, as in the video LLMs vlc compares:

- uniform: N frames spread over the whole clip *in time*, one per equal segment: the frame on
  screen at the segment's midpoint, so the first and last frames are never over-represented
  (LLaVA-NeXT-Video, Video-LLaMA).
- fps: frames at a fixed rate (the frame on screen at ``0, 1/fps, 2/fps, …`` seconds), never
  finer than the video, with a cap that falls back to uniform subsampling (Video-XL, VideoLLaMA3).

``sample_frames`` works on a stream's presentation timestamps (``vlc.data.timeline``), so a
variable-frame-rate video is sampled evenly in time, not in frame index. "The frame on screen at
t" is the last frame whose timestamp is ≤ t, what a player shows; for a constant rate this is
frame ``floor(t * fps)``, so ``uniform_indices`` / ``fps_indices`` / ``sample_indices`` (frame
counts at a constant rate, e.g. a folder of numbered images) give exactly the same indices, and
a frame's timestamp there is ``index / native_fps``.

A clip window (``start``/``end`` seconds) selects the frames shown in it; a window that begins at
or after the end of the video, or ends before it starts, is a ``ClipWindowError`` (it used to give
the last frame repeated, silently).
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




class ClipWindowError(ValueError):
    """A clip window (start/end) that holds no part of the video."""


def frames_in_window(
    pts: np.ndarray, end_tick: float, seconds_per_tick: float, start: float | None = None, end: float | None = None
) -> tuple[int, int]:
    """The half-open range ``[lo, hi)`` of frames whose timestamp lies in ``[start, end]`` seconds.

    ``pts``: (n,) sorted timestamps in ticks, the first frame at ``pts[0]`` (time 0); ``end_tick``:
    where the last frame ends. ``None`` means the start / end of the video. A window that holds no
    frame timestamp (e.g. shorter than one frame) still yields the first frame from its start on,
    so a sample with a tiny window is not silently dropped; a window's end past the video's end is
    clipped to it (annotations round). A window that begins at or after the video's end, or ends
    before it begins, raises ``ClipWindowError``.
    """
    n = len(pts)
    if n < 1:
        raise ValueError("frames_in_window: no frames, expected at least 1")
    if start is not None and end is not None and end < start:
        raise ValueError(f"frames_in_window: end={end} < start={start}")
    first = int(pts[0])
    duration = (end_tick - first) * seconds_per_tick
    if (start is not None and start >= duration - 1e-9) or (end is not None and end < 0):
        raise ClipWindowError(
            f"clip window start={_s(start)}, end={_s(end)} lies outside the video (duration {duration:.3f} s, "
            f"{n} frames): it must begin before {duration:.3f} s and end at or after 0 s"
        )
    # A millionth of a mean frame: a window bound that equals a timestamp up to rounding includes it.
    eps = 1e-6 * (end_tick - first) / n
    lo = 0 if start is None else int(np.searchsorted(pts, first + start / seconds_per_tick - eps, side="left"))
    hi = n if end is None else int(np.searchsorted(pts, first + end / seconds_per_tick + eps, side="right"))
    lo = min(lo, n - 1)  # a start after the last timestamp (but before the end): the last frame
    return lo, min(max(hi, lo + 1), n)  # no timestamp inside: the first frame from the start on


def _s(value: float | None) -> str:
    return "None" if value is None else f"{value:g} s"


def sample_frames(
    pts: np.ndarray,
    end_tick: int,
    seconds_per_tick: float,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    min_interval: int | None = None,
) -> np.ndarray:
    """Sorted indices into ``pts`` for exactly one of ``num_frames`` (uniform in time) or ``fps``, inside the window.

    ``pts``: (n,) int64 presentation timestamps in ticks, sorted and distinct; ``end_tick``: the end
    of the last frame; ``seconds_per_tick``: the time base. The sampled span runs from the first
    frame in the window to the end of the last one. ``min_interval``: the smallest gap between
    timestamps when the caller knows it (1 tick at a constant rate), else it is measured.
    """
    if (num_frames is None) == (fps is None):
        raise ValueError(
            f"give exactly one of num_frames (uniform sampling) or fps (rate sampling); "
            f"got num_frames={num_frames}, fps={fps}"
        )
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"uniform sampling: num_frames={num_frames}, expected at least 1")
    if fps is not None and not fps > 0:
        raise ValueError(f"rate sampling: fps={fps}, expected > 0")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"rate sampling: max_frames={max_frames}, expected >= 1 or None")
    pts = np.asarray(pts, dtype=np.int64)
    lo, hi = frames_in_window(pts, end_tick, seconds_per_tick, start, end)
    span_lo = int(pts[lo])
    span_hi = int(pts[hi]) if hi < len(pts) else int(end_tick)
    span = span_hi - span_lo  # ticks
    if num_frames is not None:
        # The frame on screen at each segment midpoint span_lo + (k + 1/2) * span / N, compared in
        # integers (times 2N) so a midpoint that falls exactly on a timestamp picks that frame.
        k = np.arange(num_frames, dtype=np.int64)
        targets = 2 * num_frames * span_lo + (2 * k + 1) * span
        # pts <= target / 2N  ⇔  pts <= floor(target / 2N), timestamps being integers
        indices = np.searchsorted(pts[lo:hi], targets // (2 * num_frames), side="right") - 1 + lo
        return np.clip(indices, lo, hi - 1)
    step = 1.0 / (fps * seconds_per_tick)  # ticks between samples
    if hi - lo > 1:  # never finer than the video
        step = max(step, float(min_interval if min_interval is not None else np.diff(pts[lo:hi]).min()))
    # The epsilon keeps e.g. 3 * (10/3) frames from landing on 9.999… and flooring to frame 9.
    count = max(1, math.ceil(span / step - 1e-9))
    ticks = span_lo + np.arange(count) * step + 1e-6 * span / (hi - lo)
    indices = np.searchsorted(pts[lo:hi], ticks, side="right") - 1 + lo
    indices = np.unique(np.clip(indices, lo, hi - 1))  # a frame shown across two ticks is kept once
    if max_frames is not None and len(indices) > max_frames:
        indices = indices[uniform_indices(len(indices), max_frames)]
    return indices


def indices_in_window(
    num_total: int, native_fps: float, start: float | None = None, end: float | None = None
) -> tuple[int, int]:
    """``frames_in_window`` for ``num_total`` frames at a constant ``native_fps``."""
    if num_total < 1:
        raise ValueError(f"indices_in_window: num_total={num_total}, expected at least 1 frame")
    if not native_fps > 0:
        raise ValueError(f"indices_in_window: native_fps={native_fps}, expected > 0")
    return frames_in_window(np.arange(num_total, dtype=np.int64), num_total, 1.0 / native_fps, start, end)


def frame_times(indices: np.ndarray, native_fps: float) -> np.ndarray:
    """(T,) float32 seconds of frame ``indices`` at a constant rate: ``index / native_fps``, the frame's start time."""
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
    """``sample_frames`` for ``num_total`` frames at a constant ``native_fps`` (frame ``i`` at ``i / native_fps``)."""
    if num_total < 1:
        raise ValueError(f"sample_indices: num_total={num_total}, expected a video with at least 1 frame")
    if not native_fps > 0:
        raise ValueError(f"sample_indices: native_fps={native_fps}, expected > 0")
    pts = np.arange(num_total, dtype=np.int64)
    return sample_frames(pts, num_total, 1.0 / native_fps, num_frames, fps, max_frames, start, end, min_interval=1)
