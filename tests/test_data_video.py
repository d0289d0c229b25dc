"""Frame sampling and video decoding: exact indices, timestamps, colours after H.264, both backends."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlc.data.sampling import ClipWindowError, fps_indices, frame_times, indices_in_window, sample_indices, uniform_indices
from vlc.data.synthetic import PALETTE, make_needle_frames, sample_rng, write_mp4
from vlc.data.video import VideoReadError, read_video, video_info

NAMES = list(PALETTE)
PALETTE_RGB = np.array([PALETTE[c] for c in NAMES], dtype=np.float64)  # (8, 3)


def nearest_color(rgb: np.ndarray) -> str:
    return NAMES[int(np.linalg.norm(PALETTE_RGB - rgb, axis=1).argmin())]


def saturation(frames: np.ndarray) -> np.ndarray:  # (..., 3) uint8 → (...) max - min channel
    f = frames.astype(np.int32)
    return f.max(-1) - f.min(-1)


# ---------------------------------------------------------------------------------------------
# Sampling


def test_uniform_indices_are_segment_midpoints():
    assert uniform_indices(32, 8).tolist() == [2, 6, 10, 14, 18, 22, 26, 30]
    assert uniform_indices(10, 3).tolist() == [1, 5, 8]
    assert uniform_indices(5, 1).tolist() == [2]
    assert uniform_indices(7, 7).tolist() == list(range(7))
    # Shorter than asked: frames repeat, so the count stays exact.
    assert uniform_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert uniform_indices(1, 3).tolist() == [0, 0, 0]


def test_fps_indices_at_rate_and_capped():
    assert fps_indices(32, 4.0, 1.0).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert fps_indices(31, 30.0, 1.0).tolist() == [0, 30]
    assert fps_indices(100, 10.0, 3.0)[:7].tolist() == [0, 3, 6, 10, 13, 16, 20]
    assert len(fps_indices(100, 10.0, 3.0)) == 30
    # A target above the native rate is every frame once, not repeats.
    assert fps_indices(5, 4.0, 100.0).tolist() == [0, 1, 2, 3, 4]
    # Over the cap: thinned uniformly over the whole clip, not truncated.
    assert fps_indices(32, 4.0, 4.0, max_frames=8).tolist() == [2, 6, 10, 14, 18, 22, 26, 30]
    assert fps_indices(32, 4.0, 1.0, max_frames=100).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]


def test_window_bounds():
    assert indices_in_window(32, 4.0) == (0, 32)
    assert indices_in_window(32, 4.0, 1.0, 2.0) == (4, 9)  # t = 1.0, 1.25, …, 2.0 inclusive
    assert indices_in_window(32, 4.0, 1.1, 1.2) == (5, 6)  # no timestamp inside: next frame
    assert indices_in_window(32, 4.0, 7.0, 100.0) == (28, 32)
    assert indices_in_window(32, 4.0, 7.9, 60.0) == (31, 32)  # starts inside the last frame: that frame
    with pytest.raises(ClipWindowError, match=r"start=50 s, end=60 s lies outside the video \(duration 8.000 s"):
        indices_in_window(32, 4.0, 50.0, 60.0)  # wholly past the end: an error, not the last frame repeated
    with pytest.raises(ClipWindowError, match="lies outside the video"):
        indices_in_window(32, 4.0, 8.0, None)  # the video ends at 8.0 s: nothing is shown from then on
    assert sample_indices(32, 4.0, num_frames=2, start=1.0, end=2.0).tolist() == [5, 7]
    assert sample_indices(32, 4.0, fps=1.0, start=1.0, end=3.0).tolist() == [4, 8, 12]
    with pytest.raises(ValueError, match="exactly one of num_frames"):
        sample_indices(32, 4.0, num_frames=4, fps=1.0)


@settings(max_examples=200, deadline=None)
@given(
    num_total=st.integers(1, 20_000),
    native_fps=st.floats(0.1, 240.0),
    num_frames=st.integers(1, 512),
    target_fps=st.floats(0.01, 240.0),
    max_frames=st.none() | st.integers(1, 512),
)
def test_sampling_properties(num_total, native_fps, num_frames, target_fps, max_frames):
    for indices in (
        uniform_indices(num_total, num_frames),
        fps_indices(num_total, native_fps, target_fps, max_frames),
    ):
        assert indices.dtype == np.int64
        assert indices.min() >= 0 and indices.max() < num_total
        assert np.all(np.diff(indices) >= 0)
        times = frame_times(indices, native_fps)
        np.testing.assert_allclose(times, indices / native_fps, rtol=1e-6)
        assert np.all(times < num_total / native_fps + 1e-6)
    assert len(uniform_indices(num_total, num_frames)) == num_frames
    fps_count = len(fps_indices(num_total, native_fps, target_fps, max_frames))
    assert 1 <= fps_count <= (max_frames or num_total) and fps_count <= num_total
    if num_total >= num_frames:  # no repeats unless the clip is too short
        assert len(np.unique(uniform_indices(num_total, num_frames))) == num_frames


# ---------------------------------------------------------------------------------------------
# Decoding


@pytest.fixture(scope="module")
def needle_video(tmp_path_factory) -> tuple[Path, np.ndarray, dict]:
    frames, meta = make_needle_frames(16, 0.5, "blue", 32, sample_rng(0, "test", 0), shape="square")
    path = tmp_path_factory.mktemp("video") / "needle.mp4"
    write_mp4(path, frames, fps=4.0)
    return path, frames, meta


@pytest.mark.parametrize("backend", ["decord", "av"])
def test_decode_count_size_and_times(needle_video, backend):
    path, frames, meta = needle_video
    assert video_info(path, backend) == (16, 4.0)
    clip = read_video(path, num_frames=16, backend=backend)
    assert clip.frames.shape == (16, 32, 32, 3) and clip.frames.dtype == torch.uint8
    assert torch.equal(clip.times, torch.arange(16, dtype=torch.float32) / 4.0)
    assert clip.native_fps == 4.0 and clip.duration == 4.0 and clip.path == str(path)
    # Low CRF: the decoded frames stay close to what was written.
    assert np.abs(clip.frames.numpy().astype(int) - frames).mean() < 3.0

    assert meta["needle_index"] == 8
    sub = read_video(path, num_frames=4, backend=backend)
    assert sub.times.tolist() == [0.5, 1.5, 2.5, 3.5]  # frames 2, 6, 10, 14
    rate = read_video(path, fps=2.0, max_frames=3, backend=backend)
    assert rate.times.tolist() == [0.5, 2.0, 3.0]  # frames 0, 2, …, 14 thinned to 3 midpoints: 2, 8, 12
    window = read_video(path, fps=4.0, start=1.0, end=2.0, backend=backend)
    assert window.times.tolist() == [1.0, 1.25, 1.5, 1.75, 2.0]


def test_decord_and_av_give_the_same_frames(needle_video):
    path, _, _ = needle_video
    a = read_video(path, num_frames=16, backend="decord").frames.numpy().astype(int)
    b = read_video(path, num_frames=16, backend="av").frames.numpy().astype(int)
    assert np.abs(a - b).max() <= 2
    a = read_video(path, num_frames=5, backend="decord").frames.numpy().astype(int)
    b = read_video(path, num_frames=5, backend="av").frames.numpy().astype(int)
    assert np.abs(a - b).max() <= 2


def test_resize_keeps_the_colour(needle_video):
    path, _, meta = needle_video
    clip = read_video(path, num_frames=16, size=(16, 24))
    assert clip.frames.shape == (16, 16, 24, 3)
    y0, x0, y1, x1 = meta["box"]
    cy, cx = (y0 + y1) // 4, (x0 + x1) * 24 // 64  # the box centre in the resized frame
    assert nearest_color(clip.frames[8, cy, cx].numpy().astype(float)) == "blue"


@pytest.mark.parametrize("shape", ["square", "circle"])
def test_every_palette_colour_survives_h264_at_32px(tmp_path, shape):
    rng = sample_rng(1, shape, 0)
    for k, color in enumerate(NAMES):
        frames, meta = make_needle_frames(12, k / 8, color, 32, rng, shape=shape)
        path = tmp_path / f"{color}.mp4"
        write_mp4(path, frames, fps=4.0)
        decoded = read_video(path, num_frames=12).frames.numpy()  # (12, 32, 32, 3)
        y0, x0, y1, x1 = meta["box"]
        i = meta["needle_index"]
        assert i == int(12 * k / 8)
        m = 3 if shape == "circle" else 2  # an inner patch, away from chroma-subsampled edges
        inner = decoded[i, y0 + m : y1 - m, x0 + m : x1 - m].reshape(-1, 3).astype(float)
        assert meta["color"] == color and nearest_color(inner.mean(0)) == color
        assert np.linalg.norm(inner.mean(0) - PALETTE[color]) < 20
        assert saturation(decoded[i, y0 + m : y1 - m, x0 + m : x1 - m]).mean() > 100
        haystack = np.delete(decoded, i, axis=0)
        assert saturation(haystack).mean() < 2.0 and saturation(haystack).max() < 40


# ---------------------------------------------------------------------------------------------
# Failures name the file and the cause


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, needle_video) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    data = needle_video[0].read_bytes()
    files = {"missing": root / "missing.mp4", "empty": root / "empty.mp4"}
    files["empty"].write_bytes(b"")
    files["truncated"] = root / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"] = root / "garbage.mp4"
    files["garbage"].write_bytes(bytes(range(256)) * 8)
    files["audio_only"] = root / "audio_only.mp4"
    with av.open(str(files["audio_only"]), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return files


@pytest.mark.parametrize("backend", ["decord", "av"])
@pytest.mark.parametrize(
    "kind, cause",
    [
        ("missing", "missing file"),
        ("empty", "zero-byte file"),
        ("truncated", "corrupt"),
        ("garbage", "corrupt"),
        ("audio_only", "no video stream"),
    ],
)
def test_unreadable_video_raises_naming_path_and_cause(broken_files, backend, kind, cause):
    path = broken_files[kind]
    with pytest.raises(VideoReadError, match=cause) as info:
        read_video(path, num_frames=4, backend=backend)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_decord_numbering_is_trusted_only_when_it_agrees_with_the_timestamps(needle_video, monkeypatch, caplog):
    """decord numbers frames itself; a reader that counts other frames than the stream's timestamps
    would return the wrong frames for the right times, so such a file is read with PyAV (warned once)."""
    import decord

    from vlc.data import video as video_module

    real = decord.VideoReader

    class ShortReader:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def __len__(self):
            return len(self.inner) - 1

    monkeypatch.setattr(decord, "VideoReader", ShortReader)
    monkeypatch.setattr(video_module, "_warned_decord_fallback", False)
    clip = read_video(needle_video[0], num_frames=4, backend="decord")
    expected = read_video(needle_video[0], num_frames=4, backend="av")
    assert torch.equal(clip.frames, expected.frames) and clip.times.tolist() == [0.5, 1.5, 2.5, 3.5]
    assert "decord counts 15 frames, the stream's timestamps 16; decoding it with PyAV" in caplog.text


def test_read_video_argument_errors(needle_video):
    path = needle_video[0]
    with pytest.raises(ValueError, match="exactly one of num_frames or fps"):
        read_video(path)
    with pytest.raises(ValueError, match="exactly one of num_frames or fps"):
        read_video(path, num_frames=4, fps=1.0)
    with pytest.raises(ValueError, match="unknown video backend 'opencv'"):
        read_video(path, num_frames=4, backend="opencv")
