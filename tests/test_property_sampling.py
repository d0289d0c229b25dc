"""Properties of frame sampling: for any duration, frame rate, frame count and window, the indices
are in range, sorted and inside the window, and every timestamp is index / native fps — in the
sampler and through a real decode; a window wholly past the end is an error."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlc.data.sampling import ClipWindowError, frame_times, indices_in_window, sample_indices
from vlc.data.synthetic import write_mp4
from vlc.data.video import read_video

durations = st.floats(0.01, 4 * 3600.0)  # seconds, up to a four-hour video
native_rates = st.sampled_from([1.0, 8.0, 23.976, 24.0, 25.0, 29.97, 30.0, 59.94, 60.0, 120.0]) | st.floats(0.5, 240.0)


@st.composite
def video_and_window(draw):
    native_fps = draw(native_rates)
    num_total = max(1, round(draw(durations) * native_fps))
    duration = num_total / native_fps
    start = draw(st.none() | st.floats(0, duration * 1.2))
    end = draw(st.none() | st.floats(0, duration * 1.2))
    if start is not None and end is not None and end < start:
        start, end = end, start
    return num_total, native_fps, start, end


@settings(max_examples=300, deadline=None)
@given(video=video_and_window(), num_frames=st.integers(1, 1024))
def test_uniform_sampling_in_range_sorted_in_window_with_true_times(video, num_frames):
    num_total, native_fps, start, end = video
    if _past_the_end(num_total, native_fps, start):
        with pytest.raises(ClipWindowError, match="lies outside the video"):
            sample_indices(num_total, native_fps, num_frames=num_frames, start=start, end=end)
        return
    indices = sample_indices(num_total, native_fps, num_frames=num_frames, start=start, end=end)
    lo, hi = indices_in_window(num_total, native_fps, start, end)
    assert len(indices) == num_frames  # exactly what was asked, however short the clip
    assert 0 <= lo <= indices.min() and indices.max() < hi <= num_total
    assert np.all(np.diff(indices) >= 0)
    if hi - lo >= num_frames:
        assert len(np.unique(indices)) == num_frames  # repeats only when the window is too short
    else:
        assert set(indices.tolist()) == set(range(lo, hi))  # … and then every frame of it is used
    times = frame_times(indices, native_fps)
    np.testing.assert_allclose(times, indices / native_fps, rtol=1e-6, atol=1e-6)
    _check_window(times, native_fps, num_total, start, end)


@settings(max_examples=300, deadline=None)
@given(video=video_and_window(), target_fps=st.floats(0.01, 240.0), max_frames=st.none() | st.integers(1, 1024))
def test_rate_sampling_in_range_sorted_spaced_and_capped(video, target_fps, max_frames):
    num_total, native_fps, start, end = video
    if _past_the_end(num_total, native_fps, start):
        with pytest.raises(ClipWindowError, match="lies outside the video"):
            sample_indices(num_total, native_fps, fps=target_fps, max_frames=max_frames, start=start, end=end)
        return
    indices = sample_indices(num_total, native_fps, fps=target_fps, max_frames=max_frames, start=start, end=end)
    lo, hi = indices_in_window(num_total, native_fps, start, end)
    assert 1 <= len(indices) <= min(hi - lo, max_frames or hi - lo)
    assert lo <= indices.min() and indices.max() < hi
    assert np.all(np.diff(indices) > 0)  # rate sampling never repeats a frame
    times = frame_times(indices, native_fps)
    np.testing.assert_allclose(times, indices / native_fps, rtol=1e-6, atol=1e-6)
    _check_window(times, native_fps, num_total, start, end)
    step = max(1 / target_fps, 1 / native_fps)  # seconds between samples, never finer than the video
    expected = math.ceil((hi - lo) / (step * native_fps) - 1e-9)
    if max_frames is None or expected <= max_frames:
        # Uncapped: one frame per step, each the frame at or just before its tick (within one frame).
        assert len(indices) == expected
        ticks = (lo / native_fps) + step * np.arange(len(indices))
        tol = _float32_tol(times)
        assert np.all(times <= ticks + tol) and np.all(times > ticks - 1 / native_fps - tol)


def _past_the_end(num_total: int, native_fps: float, start: float | None) -> bool:
    """A window that begins when the last frame has ended holds nothing of the video."""
    return start is not None and start >= num_total / native_fps - 1e-9


def _float32_tol(times: np.ndarray) -> float:
    # Timestamps are float32 seconds: ~0.5 ms resolution at four hours, far below a frame period.
    return float(4 * np.spacing(np.float32(max(1.0, float(np.abs(times).max()))))) + 1e-6


def _check_window(times: np.ndarray, native_fps: float, num_total: int, start, end) -> None:
    """Every time lies in [start, end]; a window holding no frame yields the frame just after start
    (or the last frame when the window starts during it), never a frame before start."""
    tol = _float32_tol(times)
    duration_last = (num_total - 1) / native_fps
    if start is not None:
        assert times.min() >= min(start, duration_last) - tol
    if end is not None:
        inside = math.floor(end * native_fps + 1e-6) >= math.ceil((start or 0) * native_fps - 1e-6)
        if inside:
            assert times.max() <= end + tol


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_total=st.integers(1, 12),
    native_fps=st.sampled_from([1.0, 2.0, 4.0, 7.5, 25.0]),
    num_frames=st.integers(1, 16),
    backend=st.sampled_from(["decord", "av"]),
)
def test_decoded_clip_times_match_the_sampler(num_total, native_fps, num_frames, backend):
    """Through a real H.264 file: the frames decoded are the frames the sampler chose (each frame of
    the video is a distinct grey level), with the sampler's timestamps."""
    levels = np.linspace(16, 240, num_total).round().astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (num_total, 16, 16, 3)).copy()
    with tempfile.TemporaryDirectory(prefix="vlc-prop-") as folder:
        path = Path(folder) / "v.mp4"
        write_mp4(path, frames, fps=native_fps)
        clip = read_video(path, num_frames=num_frames, backend=backend)
    indices = sample_indices(num_total, native_fps, num_frames=num_frames)
    assert clip.times.tolist() == frame_times(indices, native_fps).tolist()
    decoded_levels = clip.frames.float().mean((1, 2, 3)).numpy()
    nearest = np.abs(decoded_levels[:, None] - levels[None, :].astype(float)).argmin(1)
    assert nearest.tolist() == indices.tolist()


def _before(num_total, native_fps, num_frames, fps, max_frames, start, end):
    """The sampler as it was before it read timestamps (index arithmetic at a constant rate), restated."""
    lo = 0 if start is None else math.ceil(start * native_fps - 1e-6)
    hi = num_total if end is None else math.floor(end * native_fps + 1e-6) + 1
    lo = min(max(lo, 0), num_total - 1)
    hi = min(max(hi, lo + 1), num_total)
    n = hi - lo
    if num_frames is not None:
        k = np.arange(num_frames, dtype=np.int64)
        return lo + (2 * k + 1) * n // (2 * num_frames)
    step = max(native_fps / fps, 1.0)
    count = max(1, math.ceil(n / step - 1e-9))
    indices = np.minimum(np.floor(np.arange(count) * step + 1e-6).astype(np.int64), n - 1)
    if max_frames is not None and len(indices) > max_frames:
        k = np.arange(max_frames, dtype=np.int64)
        indices = indices[(2 * k + 1) * len(indices) // (2 * max_frames)]
    return lo + indices


@settings(max_examples=60, deadline=None)
@given(video=video_and_window(), num_frames=st.none() | st.integers(1, 512), target_fps=st.floats(0.05, 240.0),
       max_frames=st.none() | st.integers(1, 512))
def test_constant_rate_sampling_is_what_it_was(video, num_frames, target_fps, max_frames):
    """At a constant rate, sampling by time picks exactly the frames index arithmetic picked."""
    num_total, native_fps, start, end = video
    if _past_the_end(num_total, native_fps, start):
        return  # an error now (the test above); it used to be the last frame repeated
    fps = None if num_frames is not None else target_fps
    got = sample_indices(num_total, native_fps, num_frames=num_frames, fps=fps, max_frames=max_frames,
                         start=start, end=end)
    assert got.tolist() == _before(num_total, native_fps, num_frames, fps, max_frames, start, end).tolist()
