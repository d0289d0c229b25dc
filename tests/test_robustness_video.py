"""Every way a video file can be bad gives a VideoReadError naming the file and the cause, on both
backends; a short video is sampled with repeated frames and true timestamps, never zeros."""

from __future__ import annotations

import fractions
import logging
import os
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vlc.data import video as video_module
from vlc.data.annotations import Sample
from vlc.data.datamodule import VideoQADataset, collate_video_qa
from vlc.data.synthetic import make_needle_frames, sample_rng, write_mp4
from vlc.data.video import VideoReadError, file_problem, read_video, video_info

BACKENDS = ["decord", "av"]


def write_faststart_mp4(path: Path, frames: np.ndarray, fps: float = 4.0) -> None:
    """H.264 mp4 with the index (moov) up front, so a cut-off tail still opens but does not decode."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    frames, _ = make_needle_frames(16, 0.5, "blue", 32, sample_rng(0, "robust", 0), shape="square")
    f = {name: root / f"{name}.mp4" for name in ("good", "short", "one_frame", "missing", "empty")}
    write_mp4(f["good"], frames, fps=4.0)
    write_mp4(f["short"], frames[:3], fps=4.0)
    write_mp4(f["one_frame"], frames[:1], fps=4.0)
    f["empty"].write_bytes(b"")
    data = f["good"].read_bytes()
    f["truncated"] = root / "truncated.mp4"  # index at the end: the cut removes it, the file does not open
    f["truncated"].write_bytes(data[: len(data) // 2])
    write_faststart_mp4(root / "faststart.mp4", frames)
    f["truncated_tail"] = root / "truncated_tail.mp4"  # index up front: opens, then the frames run out
    f["truncated_tail"].write_bytes((root / "faststart.mp4").read_bytes()[: int(len(data) * 0.6)])
    flipped = bytearray(data)
    for i in range(200, len(flipped) // 2, 7):
        flipped[i] ^= 0xFF
    f["corrupt"] = root / "corrupt.mp4"
    f["corrupt"].write_bytes(bytes(flipped))
    f["unknown_codec"] = root / "unknown_codec.mp4"  # the stream's codec tag renamed: no decoder for it
    f["unknown_codec"].write_bytes(data.replace(b"avc1", b"zzzz"))
    f["audio_only"] = root / "audio_only.mp4"
    with av.open(str(f["audio_only"]), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    f["zero_frames"] = root / "zero_frames.avi"  # a video stream with a header and no frames
    with av.open(str(f["zero_frames"]), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # writes the header though no frame follows
    for kind, suffix in (("png", "png"), ("jpeg", "jpg")):
        Image.fromarray(frames[0]).save(root / f"image.{suffix}")
        f[f"{kind}_as_mp4"] = root / f"{kind}_named.mp4"
        f[f"{kind}_as_mp4"].write_bytes((root / f"image.{suffix}").read_bytes())
    f["gif"] = root / "still.gif"
    Image.fromarray(frames[0]).save(f["gif"])
    f["directory"] = root / "a_folder.mp4"
    f["directory"].mkdir()
    f["symlink_loop"] = root / "loop.mp4"  # loop.mp4 → loop2.mp4 → loop.mp4
    os.symlink(root / "loop2.mp4", f["symlink_loop"])
    os.symlink(f["symlink_loop"], root / "loop2.mp4")
    f["broken_symlink"] = root / "dangling.mp4"
    os.symlink(root / "gone.mp4", f["broken_symlink"])
    f["fifo"] = root / "pipe.mp4"  # reading it would block for ever: it must never be opened
    os.mkfifo(f["fifo"])
    f["dev_zero"] = Path("/dev/zero")  # endless zero bytes that stat() calls empty
    return f


CASES = [  # (file, the cause the message gives, verbatim)
    ("missing", "missing file (no such path)"),
    ("empty", "zero-byte file"),
    ("directory", "is a directory, expected a video file"),
    ("truncated", "cannot open: file corrupt, truncated or not a video"),
    ("truncated_tail", "cannot decode: file corrupt or truncated"),
    ("corrupt", "cannot decode: file corrupt or truncated"),
    ("unknown_codec", "no decoder for its video codec (unknown or unsupported by this FFmpeg build)"),
    ("audio_only", "no video stream in the file (only audio)"),
    ("zero_frames", "zero frames in the video stream (zero duration)"),
    ("png_as_mp4", "a still PNG image, not a video"),
    ("jpeg_as_mp4", "a still JPEG image, not a video"),
    ("symlink_loop", "symlink loop (too many levels of symbolic links)"),
    ("broken_symlink", "broken symlink (its target "),
    ("fifo", "not a regular file (FIFO)"),
    ("dev_zero", "not a regular file (character device)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, cause", CASES)
def test_every_bad_file_names_path_and_cause(files, backend, kind, cause):
    path = files[kind]
    with pytest.raises(VideoReadError, match=re.escape(cause)) as info:
        read_video(path, num_frames=8, backend=backend)
    message = str(info.value)
    assert message.startswith(f"cannot read video {path}: ") and info.value.path == str(path)
    assert message.count(str(path)) == 1  # the path once, not echoed again by the backend's text
    assert "/workspace/" not in message and ".cc:" not in message  # decord's source locations are dropped
    if kind not in ("truncated_tail", "corrupt"):  # these open fine: only decoding frames fails
        with pytest.raises(VideoReadError, match=re.escape(cause)):
            video_info(path, backend)


def test_file_problem_is_the_decode_free_subset(files):
    """The pre-flight check (data.check_files) finds these without decoding anything."""
    assert file_problem(files["good"]) is None and file_problem(files["gif"]) is None
    assert file_problem(files["missing"]) == "missing file (no such path)"
    assert file_problem(files["empty"]) == "zero-byte file"
    assert file_problem(files["directory"]) == "is a directory, expected a video file"
    assert file_problem(files["png_as_mp4"]) == "a still PNG image, not a video"
    assert file_problem(files["jpeg_as_mp4"]) == "a still JPEG image, not a video"
    # Needs decoding to tell: left to read_video.
    assert file_problem(files["corrupt"]) is None and file_problem(files["audio_only"]) is None
    # Special files get their true cause (they used to read "missing file" or "zero-byte file").
    assert file_problem(files["symlink_loop"]) == "symlink loop (too many levels of symbolic links)"
    target = files["broken_symlink"].parent / "gone.mp4"
    assert file_problem(files["broken_symlink"]) == f"broken symlink (its target {target} does not exist)"
    assert file_problem(files["fifo"]) == "not a regular file (FIFO)"
    assert file_problem(files["dev_zero"]) == "not a regular file (character device)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_frames_than_asked_repeat_with_true_timestamps(files, backend):
    """3 frames at 4 fps, 8 asked: each real frame repeats, with its own time; nothing is zero-filled."""
    clip = read_video(files["short"], num_frames=8, backend=backend)
    assert clip.times.tolist() == [0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.5]
    assert clip.frames.shape == (8, 32, 32, 3) and clip.duration == 0.75
    full = read_video(files["short"], num_frames=3, backend=backend).frames
    assert torch.equal(clip.frames, full[[0, 0, 0, 1, 1, 2, 2, 2]])
    assert (clip.frames.flatten(1).float().mean(1) > 20).all()  # every frame is a real (non-black) frame
    # fps sampling of a short clip returns what there is: fewer frames, marked real by the collator.
    by_rate = read_video(files["short"], fps=4.0, backend=backend)
    assert by_rate.times.tolist() == [0.0, 0.25, 0.5]
    # One frame: the same frame at time 0, eight times.
    single = read_video(files["one_frame"], num_frames=8, backend=backend)
    assert single.times.tolist() == [0.0] * 8 and torch.equal(single.frames, single.frames[:1].expand(8, -1, -1, -1))


def test_collated_short_clip_is_padded_and_masked_not_silently_zero(files):
    sample = Sample(id="short", video=str(files["short"]), question="q", answer="a", candidates=["a", "b"])
    long = Sample(id="long", video=str(files["good"]), question="q", answer="a", candidates=["a", "b"])
    batch = collate_video_qa([VideoQADataset([s], fps=4.0)[0] for s in (sample, long)])
    assert batch["frame_mask"].sum(1).tolist() == [3, 16]  # the padding is marked, so the model never reads it


def test_gif_decord_cannot_read_falls_back_to_pyav(files, caplog, monkeypatch):
    monkeypatch.setattr(video_module, "_warned_decord_fallback", False)
    with caplog.at_level(logging.WARNING, logger="vlc.data.video"):
        clip = read_video(files["gif"], num_frames=2, backend="decord")
    assert clip.frames.shape == (2, 32, 32, 3) and clip.times.tolist() == [0.0, 0.0]
    assert str(files["gif"]) in caplog.text and "decoding it with PyAV" in caplog.text


def test_error_type_and_path_survive_a_dataloader_worker(files):
    """torch re-raises a worker's exception from its text alone; VideoReadError keeps type and path."""
    sample = Sample(id="bad", video=str(files["corrupt"]), question="q", answer="a", candidates=["a", "b"])
    loader = DataLoader(VideoQADataset([sample], num_frames=2), batch_size=1, num_workers=1,
                        collate_fn=collate_video_qa)
    with pytest.raises(VideoReadError) as info:
        next(iter(loader))
    assert info.value.path == str(files["corrupt"])
    assert info.value.cause.startswith("cannot decode: file corrupt or truncated")


# ---------------------------------------------------------------------------------------------
# a clip window past the end of the video; a memory error while decoding


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_window_past_the_end_names_the_file_and_the_duration(files, backend):
    """It used to give the last frame repeated, silently; an end past the end is only clipped."""
    path = files["good"]  # 16 frames at 4 fps: 4.0 s
    with pytest.raises(VideoReadError) as info:
        read_video(path, num_frames=4, start=12.0, end=14.0, backend=backend)
    assert str(info.value) == (f"cannot read video {path}: clip window start=12 s, end=14 s lies outside the video "
                               f"(duration 4.000 s, 16 frames): it must begin before 4.000 s and end at or after 0 s")
    with pytest.raises(VideoReadError, match="start=4 s, end=None lies outside the video"):
        read_video(path, fps=4.0, start=4.0, backend=backend)  # the last frame ends at 4.0 s
    clipped = read_video(path, fps=4.0, start=3.0, end=100.0, backend=backend)  # annotations round: clipped
    assert clipped.times.tolist() == [3.0, 3.25, 3.5, 3.75]


def test_clip_window_past_the_end_is_skipped_naming_the_item(files, caplog):
    late = Sample(id="late-item", video=str(files["good"]), question="q", answer="a", candidates=["a", "b"],
                  start=30.0, end=40.0)
    fine = Sample(id="fine", video=str(files["good"]), question="q", answer="a", candidates=["a", "b"])
    with caplog.at_level(logging.WARNING, logger="vlc.data.datamodule"):
        item = VideoQADataset([late, fine], num_frames=2, on_error="skip", max_skip_fraction=0.5)[0]
    assert item["id"] == "fine" and item["skipped"][0][1] == "late-item"
    assert "skipping sample late-item" in caplog.text and "lies outside the video (duration 4.000 s" in caplog.text


def test_memory_error_while_decoding_is_reported_as_one(files, monkeypatch):
    """PyAV: an allocation failure converting a frame used to read "file corrupt or truncated"."""
    import av.video.reformatter

    class NoMemory:
        def reformat(self, *args, **kwargs):
            raise MemoryError("cannot allocate the RGB frame")

    monkeypatch.setattr(av.video.reformatter, "VideoReformatter", NoMemory)
    with pytest.raises(VideoReadError) as info:
        read_video(files["good"], num_frames=4, backend="av")
    assert info.value.cause.startswith("out of memory while decoding (MemoryError: cannot allocate the RGB frame); "
                                       "the file may well be fine")
    assert info.value.path == str(files["good"]) and "corrupt" not in str(info.value)


def test_decord_out_of_memory_is_reported_not_retried_with_pyav(files, monkeypatch):
    """decord: a C++ bad_alloc used to look like a file decord cannot read, and PyAV silently tried again."""
    import decord

    real = decord.VideoReader

    class Reader:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def __len__(self):
            return len(self.inner)

        def get_batch(self, indices):
            raise RuntimeError("std::bad_alloc")

    monkeypatch.setattr(decord, "VideoReader", Reader)
    with pytest.raises(VideoReadError, match=r"out of memory while decoding \(RuntimeError: std::bad_alloc\)"):
        read_video(files["good"], num_frames=4, backend="decord")
