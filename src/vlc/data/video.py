"""Decode sampled frames of a video file, with their true timestamps, at the size the encoder needs.

``read_video`` / ``open_video`` run one pipeline whatever the backend:

1. ``vlc.data.timeline``: the stream's presentation timestamps, keyframes and display rotation,
   read from the container's packets (no decoding).
2. ``vlc.data.sampling``: which frames, uniform in time or at a rate, inside a clip window.
3. ``vlc.data.decoders``: the frames, a chunk at a time, from ``decord`` (default;
   ``VideoReader.get_batch``) or ``av`` (PyAV; decodes forward, seeks across groups of pictures).
4. ``vlc.data.frames``: each chunk turned upright, fitted to the target size by ``data.aspect``
   and resized (antialiased, uint8) before the next chunk is decoded, so no clip is ever held
   at full resolution.

So both backends give the same frames (up to their colour conversion's rounding), the same
timestamps and the same orientation. A file decord cannot read but FFmpeg opens as a video (a
GIF, say) is read with PyAV instead. Every failure surfaces as a ``VideoReadError`` that names the
file and the cause (``vlc.data.video_check``); ``file_problem`` runs the checks that need no
decoding, for a whole dataset before training.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from vlc.data.decoders import DecordFailure, DecordReader, PyAVReader, open_decord
from vlc.data.frames import CLIP_MEAN_RGB, check_aspect, chunk_size, fit_frames, output_hw, resize_frames
from vlc.data.sampling import ClipWindowError, sample_frames
from vlc.data.timeline import Timeline, read_timeline
from vlc.data.video_check import VideoReadError, check_file, file_problem

__all__ = [
    "BACKENDS", "LazyClip", "LazyFrames", "VideoClip", "VideoReadError", "file_problem", "materialize",
    "open_video", "read_video", "resize_frames", "video_info",
]

BACKENDS = ("decord", "av")

log = logging.getLogger(__name__)
_warned_decord_fallback = False  # warn once per process about files decord cannot read but PyAV can


@dataclass
class VideoClip:
    frames: torch.Tensor  # (T, H, W, 3) uint8 RGB, upright
    times: torch.Tensor  # (T,) float32 seconds: the frames' presentation times from the first frame
    native_fps: float  # the stream's average rate
    duration: float  # seconds, first frame's start to last frame's end
    path: str


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    backend: str = "decord",
    size: tuple[int, int] | None = None,
    aspect: str = "pad",
    pad_color: tuple[int, int, int] = CLIP_MEAN_RGB,
) -> VideoClip:
    """Sample frames from ``path``: ``num_frames`` uniformly in time, or at ``fps`` capped by ``max_frames``.

    ``start`` / ``end`` (seconds) restrict sampling to that window. ``size=(H, W)`` fits the
    frames to that size by ``aspect`` (``pad`` | ``crop`` | ``squash``, see ``vlc.data.frames``),
    resizing with antialiasing. ``max_frames`` only applies to fps sampling; uniform sampling
    already returns exactly ``num_frames``.
    """
    clip = open_video(path, num_frames, fps, max_frames, start, end, backend, size, aspect=aspect,
                      pad_color=pad_color)
    try:
        frames = clip.decode_hwc(0, len(clip))  # (T, H, W, 3)
    finally:
        clip.close()
    return VideoClip(frames=frames, times=clip.times, native_fps=clip.native_fps, duration=clip.duration,
                     path=clip.path)


def video_info(path: str | os.PathLike, backend: str = "decord") -> tuple[int, float]:
    """``(num_frames, fps)`` of the first video stream, without decoding frames (the same for every backend)."""
    path = os.fspath(path)
    _check_backend(backend)
    check_file(path)
    timeline = read_timeline(path)
    return timeline.num_frames, timeline.average_fps


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")


def _warn_fallback(path: str, cause: str) -> None:
    global _warned_decord_fallback
    if not _warned_decord_fallback:
        log.warning("%s: %s; decoding it with PyAV (further such files are read the same way silently)", path, cause)
        _warned_decord_fallback = True


# ---------------------------------------------------------------------------------------------
# a clip whose frames are decoded a range at a time (eager reading decodes the one full range)


class LazyClip:
    """The frames ``read_video`` would return, decoded only when a range of them is asked for.

    Opening reads the timeline, samples the frame indices and times and knows the output frame size,
    but decodes nothing. ``decode(t0, t1)`` returns frames ``t0..t1-1`` as (n, 3, H, W) uint8, so a
    consumer that works a window at a time (``vst`` with ``streaming: true``) holds one window of
    pixels instead of the whole clip. Ranges asked for in increasing order are decoded once each:
    the reader stays open (decord seeks, PyAV decodes forward or seeks across groups of pictures).
    The open reader is dropped when pickled (DataLoader workers hand clips to the main process)
    and reopened on the next decode. ``read_video`` is ``decode`` of the whole range, so the two
    give bit-identical frames.
    """

    def __init__(self, path: str, indices: np.ndarray, timeline: Timeline, backend: str,
                 size: tuple[int, int] | None = None, transform=None, aspect: str = "pad",
                 pad_color: tuple[int, int, int] = CLIP_MEAN_RGB, reader=None) -> None:
        self.path, self.indices, self.timeline = path, indices, timeline
        self.times = torch.from_numpy(timeline.seconds(indices))  # (T,) float32 seconds
        self.native_fps, self.duration = timeline.average_fps, timeline.duration
        self.backend, self.size, self.transform = backend, size, transform
        self.aspect, self.pad_color = check_aspect(aspect), tuple(int(c) for c in pad_color)
        self.frame_hw = output_hw(timeline.display_hw, size, aspect)  # (H, W) of the decoded frames
        self.decode_seconds = 0.0  # time spent decoding so far (the benchmark reports it)
        self._reader = reader  # a DecordReader or PyAVReader, opened on first use

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.indices), 3, *self.frame_hw)

    def __getstate__(self) -> dict:
        self.close()
        return dict(self.__dict__)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None

    def decode(self, t0: int, t1: int) -> torch.Tensor:
        """Frames t0..t1-1 of the clip (clamped to its length) → (n, 3, H, W) uint8."""
        start = time.perf_counter()
        frames = self.decode_hwc(t0, t1).permute(0, 3, 1, 2).contiguous()
        if self.transform is not None:
            frames = self.transform(frames)
        self.decode_seconds += time.perf_counter() - start
        return frames

    def decode_hwc(self, t0: int, t1: int) -> torch.Tensor:
        """Frames t0..t1-1 of the clip (clamped to its length) → (n, H, W, 3) uint8."""
        t0, t1 = max(0, t0), min(len(self.indices), t1)
        if t1 <= t0:
            return torch.zeros(0, *self.frame_hw, 3, dtype=torch.uint8)
        unique, inverse = np.unique(self.indices[t0:t1], return_inverse=True)
        out = torch.empty(len(unique), *self.frame_hw, 3, dtype=torch.uint8)  # (u, H, W, 3)
        k = 0
        for chunk in self._chunks(unique):
            n = chunk.shape[0]
            out[k : k + n] = self._fit(torch.from_numpy(chunk))
            k += n
        return out if len(unique) == t1 - t0 else out[torch.from_numpy(inverse.reshape(-1))]

    def _fit(self, chunk: torch.Tensor) -> torch.Tensor:
        rotation = 0 if self._reader.applies_rotation else self.timeline.rotation
        return fit_frames(chunk, self.size, self.aspect, rotation, self.pad_color)

    def _chunks(self, unique: np.ndarray):
        """Decoded frames (full size, as the reader gives them) of ``unique``, a chunk at a time."""
        chunk, done = chunk_size(self.timeline.coded_hw), 0
        if self.backend == "decord":
            try:
                if self._reader is None:
                    self._reader = DecordReader(self.path, self.timeline)
                for frames in self._reader.frames(unique, chunk):
                    done += len(frames)
                    yield frames
                return
            except DecordFailure as error:  # FFmpeg reads what decord cannot: PyAV from here on
                _warn_fallback(self.path, error.cause)
                self.backend, self._reader = "av", None
        if self._reader is None:
            self._reader = PyAVReader(self.path, self.timeline, wanted=self.indices)
        yield from self._reader.frames(unique[done:], chunk)


def open_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    backend: str = "decord",
    size: tuple[int, int] | None = None,
    transform=None,
    aspect: str = "pad",
    pad_color: tuple[int, int, int] = CLIP_MEAN_RGB,
) -> LazyClip:
    """``read_video``'s sampling without the decoding: a ``LazyClip`` that decodes on demand.

    The same checks run up front (missing, empty, image, unreadable header, zero frames, a clip
    window outside the video), so a bad file fails here, naming itself, and not halfway through
    a window.
    """
    path = os.fspath(path)
    if (num_frames is None) == (fps is None):
        raise ValueError(
            f"open_video({path}): give exactly one of num_frames or fps; got num_frames={num_frames}, fps={fps}"
        )
    _check_backend(backend)
    check_aspect(aspect)
    check_file(path)
    timeline = read_timeline(path)
    try:
        indices = sample_frames(timeline.pts, timeline.end, float(timeline.time_base), num_frames, fps, max_frames,
                                start, end)
    except ClipWindowError as error:
        raise VideoReadError(path, str(error)) from error
    reader = None
    if backend == "decord":
        try:  # opened now, so a file decord cannot read is known (and said) when the clip is opened
            reader = DecordReader(path, timeline, open_decord(path))
        except DecordFailure as error:
            _warn_fallback(path, error.cause)
            backend = "av"
    return LazyClip(path, indices, timeline, backend, size, transform, aspect, pad_color, reader)


class LazyFrames:
    """A batch of ``LazyClip`` standing in for the (B, T, 3, H, W) uint8 pixel tensor.

    ``frames[:, t0:t1]`` decodes that range of every clip (zero-padded past a clip's end, as
    ``collate_video_qa`` pads) and returns a tensor on ``device``; ``materialize()`` decodes it
    all. ``VideoLLM`` materialises it except on the streaming path, which slices it a window
    at a time.
    """

    dtype = torch.uint8
    ndim = 5

    def __init__(self, clips: list[LazyClip], device: torch.device | str = "cpu") -> None:
        if not clips:
            raise ValueError("LazyFrames: no clips")
        sizes = {clip.frame_hw for clip in clips}
        if len(sizes) > 1:
            raise ValueError(
                f"LazyFrames: frames of different sizes {sorted(sizes)} (as (H, W)) in one batch; "
                f"set frame_size so every clip is resized to the same (H, W)"
            )
        self.clips, self.device = clips, torch.device(device)
        self.shape = torch.Size((len(clips), max(len(c) for c in clips), 3, *sizes.pop()))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def decode_seconds(self) -> float:
        return sum(clip.decode_seconds for clip in self.clips)

    def to(self, device: torch.device | str, *args, **kwargs) -> LazyFrames:
        return LazyFrames(self.clips, device)

    def __getitem__(self, key) -> torch.Tensor:
        rows, frames = key if isinstance(key, tuple) and len(key) == 2 else (key, None)
        if rows != slice(None) or not isinstance(frames, slice) or frames.step not in (None, 1):
            raise IndexError(f"LazyFrames supports [:, t0:t1] only, got {key!r}")
        t0, t1, _ = frames.indices(self.shape[1])
        out = torch.zeros(self.shape[0], max(0, t1 - t0), *self.shape[2:], dtype=torch.uint8)
        for b, clip in enumerate(self.clips):
            chunk = clip.decode(t0, t1)
            out[b, : chunk.shape[0]] = chunk
        return out.to(self.device)

    def materialize(self) -> torch.Tensor:
        return self[:, 0 : self.shape[1]]


def materialize(pixels) -> torch.Tensor:
    """A pixel tensor as is; a ``LazyFrames`` decoded in full."""
    return pixels.materialize() if isinstance(pixels, LazyFrames) else pixels
