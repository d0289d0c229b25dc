"""True timestamps: a variable-frame-rate file is sampled uniformly in *time*, by its presentation
timestamps, on every backend; a constant-rate file keeps exactly the indices and times of
``index / fps`` it always had."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlc.data.sampling import sample_frames, sample_indices, uniform_indices
from vlc.data.synthetic import make_needle_frames, sample_rng, write_mp4
from vlc.data.timeline import read_timeline
from vlc.data.video import open_video, read_video, video_info
from vlc.data.video_writer import numbered_frames, read_number, write_video

BACKENDS = ["decord", "av"]

# 80 frames in 5.375 s: 64 frames 25 ms apart (0 … 1.575 s), then 16 frames 250 ms apart (1.6 … 5.35 s).
# The last frame lasts the median interval, 25 ms, so the video ends at 5.375 s.
VFR_TIMES = [0.025 * i for i in range(64)] + [1.6 + 0.25 * i for i in range(16)]


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("vfr") / "vfr.mp4", numbered_frames(80), times=VFR_TIMES)


def _numbers(frames: torch.Tensor) -> list[int]:
    return [read_number(f) for f in frames.numpy()]


def test_timeline_holds_the_presentation_timestamps(vfr_video):
    timeline = read_timeline(str(vfr_video))
    assert timeline.num_frames == 80 and timeline.duration == 5.375
    np.testing.assert_allclose(timeline.seconds(np.arange(80)), VFR_TIMES, atol=1e-6)
    assert video_info(vfr_video) == (80, timeline.average_fps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vfr_uniform_sampling_is_uniform_in_time(vfr_video, backend):
    clip = read_video(vfr_video, num_frames=16, backend=backend)
    # Segment midpoints (k + 1/2) * 5.375 / 16 s → the frame on screen then.
    expected = [6, 20, 33, 47, 60, 64, 66, 67, 69, 70, 71, 73, 74, 75, 77, 78]
    assert _numbers(clip.frames) == expected  # the decoded frames are the ones sampled
    np.testing.assert_allclose(clip.times, [VFR_TIMES[i] for i in expected], atol=1e-6)
    assert clip.times.tolist()[:6] == pytest.approx([0.15, 0.5, 0.825, 1.175, 1.5, 1.6])
    # Index-uniform sampling (what index / average fps gave) would take 13 of 16 frames from the
    # dense first 1.6 s; uniform in time takes 5, one per 0.336 s like every other segment.
    assert sum(i < 64 for i in uniform_indices(80, 16)) == 13 and sum(i < 64 for i in expected) == 5
    assert clip.duration == 5.375


@pytest.mark.parametrize("backend", BACKENDS)
def test_vfr_rate_sampling_and_window_use_real_times(vfr_video, backend):
    by_rate = read_video(vfr_video, fps=2.0, backend=backend)  # the frame on screen at 0, 0.5, …, 5.0 s
    assert _numbers(by_rate.frames) == [0, 20, 40, 60, 65, 67, 69, 71, 73, 75, 77]
    np.testing.assert_allclose(by_rate.times, [0, 0.5, 1.0, 1.5, 1.85, 2.35, 2.85, 3.35, 3.85, 4.35, 4.85], atol=1e-6)
    # [2.0, 4.0] s holds frames 66…73 (2.10 … 3.85 s); 4 midpoints of 2.10 … 4.10 s.
    window = read_video(vfr_video, num_frames=4, start=2.0, end=4.0, backend=backend)
    assert _numbers(window.frames) == [67, 69, 71, 73]
    np.testing.assert_allclose(window.times, [2.35, 2.85, 3.35, 3.85], atol=1e-6)


def test_vfr_lazy_ranges_equal_eager(vfr_video):
    for backend in BACKENDS:
        eager = read_video(vfr_video, num_frames=16, backend=backend).frames.permute(0, 3, 1, 2)
        clip = open_video(vfr_video, num_frames=16, backend=backend)
        assert torch.equal(torch.cat([clip.decode(0, 5), clip.decode(5, 11), clip.decode(11, 16)]), eager)


def test_backends_agree_on_frames_and_times(vfr_video):
    a = read_video(vfr_video, num_frames=16, backend="decord")
    b = read_video(vfr_video, num_frames=16, backend="av")
    assert torch.equal(a.times, b.times)
    assert (a.frames.int() - b.frames.int()).abs().max() <= 2  # the two colour conversions round apart


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_rate_file_keeps_index_over_fps(tmp_path, backend):
    """Same indices and float32 times as before the timestamps were read from the stream."""
    frames, _ = make_needle_frames(30, 0.5, "blue", 32, sample_rng(0, "cfr", 0), shape="square")
    path = tmp_path / "cfr.mp4"
    write_mp4(path, frames, fps=7.5)
    timeline = read_timeline(str(path))
    assert timeline.duration == 4.0 and timeline.average_fps == 7.5
    for kwargs in (dict(num_frames=8), dict(num_frames=7), dict(num_frames=45), dict(fps=2.0),
                   dict(fps=3.0, max_frames=5), dict(num_frames=5, start=1.0, end=2.5), dict(fps=7.5, start=3.5)):
        clip = read_video(path, backend=backend, **kwargs)
        indices = sample_indices(30, 7.5, **kwargs)
        assert clip.times.tolist() == (indices / 7.5).astype(np.float32).tolist(), kwargs
        ticks = sample_frames(timeline.pts, timeline.end, float(timeline.time_base), **kwargs)
        assert ticks.tolist() == indices.tolist(), kwargs
    assert sample_indices(30, 7.5, num_frames=7).tolist() == [2, 6, 10, 15, 19, 23, 27]
    assert sample_indices(30, 7.5, fps=3.0, max_frames=5).tolist() == [2, 7, 15, 20, 25]
