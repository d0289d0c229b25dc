"""Decode sampled frames of a video file, with their timestamps.

Two backends read the same files the same way: ``decord`` (default; ``VideoReader.get_batch``
seeks to the wanted frames) and ``av`` (PyAV; decodes in order and keeps the wanted frames, a
fallback where decord is not available or misreads a file). A file decord cannot read but FFmpeg
opens as a video (a GIF, say) is read with PyAV instead. Every failure surfaces as a
``VideoReadError`` that names the file and the cause (missing, zero bytes, a still image, no video
stream, no decoder for the codec, zero frames, corrupt or truncated), so a bad file in a dataset of
thousands can be found. ``file_problem`` runs the checks that need no decoding, for a whole dataset
before training.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlc.data.sampling import frame_times, sample_indices

BACKENDS = ("decord", "av")

log = logging.getLogger(__name__)
_warned_decord_width = False  # warn about the decord width fallback once per process
_warned_decord_fallback = False  # likewise for files decord cannot open but PyAV can


class VideoReadError(RuntimeError):
    """A video file that cannot be read: missing, empty, corrupt, an image, without video, or frameless."""

    def __init__(self, path: str, cause: str | None = None) -> None:
        if cause is None:
            # A DataLoader worker's exception reaches the main process rebuilt from its text alone
            # (torch's ExceptionWrapper calls the class with one message): keep the type, and
            # recover the path and the cause from the last "cannot read video …" line.
            super().__init__(path)
            found = re.findall(r"cannot read video (.+?): (.*)", str(path))
            self.path, self.cause = found[-1] if found else ("", str(path))
            return
        super().__init__(f"cannot read video {path}: {cause}")
        self.path = str(path)
        self.cause = cause


@dataclass
class VideoClip:
    frames: torch.Tensor  # (T, H, W, 3) uint8 RGB
    times: torch.Tensor  # (T,) float32 seconds, index / native_fps
    native_fps: float
    duration: float  # seconds, num_total / native_fps
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
) -> VideoClip:
    """Sample frames from ``path``: ``num_frames`` uniformly, or at ``fps`` capped by ``max_frames``.

    ``start`` / ``end`` (seconds) restrict sampling to that window. ``size=(H, W)`` resizes the
    frames bilinearly (with antialiasing, so downscaling does not alias). ``max_frames`` only
    applies to fps sampling; uniform sampling already returns exactly ``num_frames``.
    """
    clip = open_video(path, num_frames, fps, max_frames, start, end, backend, size)
    frames = clip.decode(0, len(clip)).permute(0, 2, 3, 1).contiguous()  # (T, H, W, 3)
    clip.close()
    return VideoClip(frames=frames, times=clip.times, native_fps=clip.native_fps, duration=clip.duration,
                     path=clip.path)


def video_info(path: str | os.PathLike, backend: str = "decord") -> tuple[int, float]:
    """``(num_frames, fps)`` of the first video stream, without decoding frames."""
    path = os.fspath(path)
    _check_backend(backend)
    _check_file(path)
    if backend == "decord":
        try:
            return _stream_info(path, _open_decord(path))
        except _DecordFailure as error:
            _warn_fallback(path, error.cause)
    return _stream_info(path, None)


def _stream_info(path: str, reader) -> tuple[int, float]:
    """Frame count and rate from an open decord reader, or from PyAV when ``reader`` is None."""
    if reader is not None:
        num_total, native_fps = len(reader), float(reader.get_avg_fps())
    else:
        num_total, native_fps = _info_av(path)
    if num_total < 1:
        raise VideoReadError(path, "zero frames in the video stream (zero duration)")
    if not native_fps > 0:
        raise VideoReadError(path, f"video stream reports frame rate {native_fps}, expected > 0")
    return num_total, native_fps


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, h, w, 3) uint8, bilinear with antialiasing."""
    h, w = int(size[0]), int(size[1])
    if frames.shape[1:3] == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a video, from the file system and its first bytes alone; None if it may be.

    Cheap enough to run on every file of a dataset before training (``data.check_files``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return "missing file (no such path)"
    if os.path.isdir(path):
        return "is a directory, expected a video file"
    if os.path.getsize(path) == 0:
        return "zero-byte file"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as error:
        return f"cannot open the file ({error.strerror or error})"
    image = _still_image_kind(head)
    if image is not None:
        return f"a still {image} image, not a video"
    return None


# Signatures of still-image formats that FFmpeg would otherwise open as a one-frame "video" at a
# made-up 25 fps. GIF is left out: animated GIFs are videos in some datasets (e.g. TGIF). Other
# image formats are caught when the file is opened (FFmpeg's image demuxers, ``_is_still_image``).
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _still_image_kind(head: bytes) -> str | None:
    for magic, kind in _IMAGE_MAGIC:
        if head.startswith(magic):
            # An animated PNG carries its animation chunk (acTL) before the image data.
            return None if kind == "PNG" and b"acTL" in head else kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


def _check_file(path: str) -> None:
    problem = file_problem(path)
    if problem is not None:
        raise VideoReadError(path, problem)


# decord prefixes its messages with a timestamp and its own source location, e.g.
# "[04:43:45] .../video_reader.cc:151: Check failed: …": noise to whoever owns the video.
_DECORD_NOISE = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+?\.(?:cc|h|cpp):\d+: ")


def _short(error: Exception, path: str = "") -> str:
    """The last line of a backend's message, without decord's noise or a repeat of the path."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()] or [""]
    text = _DECORD_NOISE.sub("", lines[-1]).replace(f": '{path}'", "").replace(f"[{path}] ", "").strip()
    return f"{type(error).__name__}: {text[:300]}"


class _DecordFailure(VideoReadError):
    """decord failed on a file that FFmpeg opens as a video: worth one more try with PyAV."""


_NO_DECODER = "no decoder for its video codec (unknown or unsupported by this FFmpeg build)"


def _warn_fallback(path: str, cause: str) -> None:
    global _warned_decord_fallback
    if not _warned_decord_fallback:
        log.warning("%s: %s; decoding it with PyAV (further such files are read the same way silently)", path, cause)
        _warned_decord_fallback = True


def _probe(path: str) -> str | None:
    """Why FFmpeg (through PyAV) sees no readable video in ``path``; None when it opens one."""
    import av

    try:
        with av.open(path) as container:
            if _is_still_image(container):
                return f"a still image ({container.format.name}), not a video"
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams})
                return "no video stream in the file" + (f" (only {', '.join(kinds)})" if kinds else "")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                return _NO_DECODER
            if not stream.frames and not any(packet.size > 0 for packet in container.demux(stream)):
                return "zero frames in the video stream (zero duration)"
    except Exception as probe_error:  # noqa: BLE001 - any failure to open means corrupt/unknown
        return f"cannot open: file corrupt, truncated or not a video ({_short(probe_error, path)})"
    return None


def _diagnose(path: str, error: Exception) -> str:
    """A readable cause for a backend failure: the backends' own messages rarely say what is wrong."""
    return _probe(path) or f"cannot decode: file corrupt or truncated ({_short(error, path)})"


def _decord_error(path: str, error: Exception) -> VideoReadError:
    cause = _probe(path)
    if cause is None:  # FFmpeg opens it: decord's own limitation (e.g. a GIF), so PyAV gets a try
        return _DecordFailure(path, f"decord cannot read it ({_short(error, path)})")
    return VideoReadError(path, cause)


def _is_still_image(container) -> bool:
    # FFmpeg's image demuxers: "png_pipe", "jpeg_pipe", "bmp_pipe", … and "image2".
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _open_decord(path: str):
    import decord

    try:
        # One thread per reader: dataloader workers already give the parallelism, and
        # decord's own thread pool per reader oversubscribes small machines.
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as error:  # noqa: BLE001 - decord raises RuntimeError and DECORDError alike
        raise _decord_error(path, error) from error


def _decode_decord(path: str, reader, indices: np.ndarray) -> np.ndarray:
    try:
        frames = reader.get_batch(indices.tolist()).asnumpy()  # (T, H, W, 3) uint8
    except Exception as error:  # noqa: BLE001
        if "DECORDArrayCopyFromTo" not in str(error):
            raise _decord_error(path, error) from error
        # decord 0.6 mishandles padded rows for a few small widths (8, 12, 16, 24, 48, 72 px):
        # get_batch fails this way. PyAV decodes the same frames, so use it for such files.
        global _warned_decord_width
        if not _warned_decord_width:
            log.warning("decord cannot copy frames of %s (a known decord bug for some small widths); using PyAV", path)
            _warned_decord_width = True
        return _decode_av(path, indices)
    if frames.shape[0] != len(indices):
        raise VideoReadError(path, f"decoded {frames.shape[0]} frames, expected {len(indices)}")
    return frames


def _info_av(path: str) -> tuple[int, float]:
    import av

    try:
        with av.open(path) as container:
            if _is_still_image(container):
                raise VideoReadError(path, f"a still image ({container.format.name}), not a video")
            if not container.streams.video:
                raise VideoReadError(path, _diagnose(path, RuntimeError("no video stream")))
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise VideoReadError(path, _NO_DECODER)
            rate = stream.average_rate or stream.guessed_rate
            num_total = stream.frames
            if not num_total:
                # Containers without a frame count in the header (e.g. some mkv/webm): count packets.
                num_total = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except VideoReadError:
        raise
    except Exception as error:  # noqa: BLE001 - PyAV raises many FFmpegError subclasses
        raise VideoReadError(path, _diagnose(path, error)) from error
    return int(num_total), float(rate) if rate else 0.0


def _decode_av(path: str, indices: np.ndarray) -> np.ndarray:
    import av
    from av.video.reformatter import VideoReformatter

    # One reformatter for the whole clip: a fresh colour converter per frame costs more than
    # decoding the frame itself.
    to_rgb = VideoReformatter()
    wanted = {int(i): k for k, i in enumerate(indices)}
    out: list[np.ndarray | None] = [None] * len(indices)
    last = int(indices.max())
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            # Frames come out of the decoder in presentation order, so the n-th decoded frame is
            # frame n, the same numbering decord uses.
            for n, frame in enumerate(container.decode(stream)):
                if n in wanted:
                    out[wanted[n]] = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                if n >= last:
                    break
    except Exception as error:  # noqa: BLE001
        raise VideoReadError(path, _diagnose(path, error)) from error
    missing = [int(indices[k]) for k, f in enumerate(out) if f is None]
    if missing:
        raise VideoReadError(path, f"stream ended before frames {missing[:5]} (header claims more frames)")
    return np.stack(out)  # (T, H, W, 3) uint8


# ---------------------------------------------------------------------------------------------
# lazy decoding: a clip whose frames are decoded a range at a time (streaming evaluation)


class LazyClip:
    """The frames ``read_video`` would return, decoded only when a range of them is asked for.

    Opening samples the frame indices and times exactly as ``read_video`` does and learns the
    frame size, but decodes nothing. ``decode(t0, t1)`` returns frames ``t0..t1-1`` as
    (n, 3, H, W) uint8, so a consumer that works a window at a time (``vst`` with
    ``streaming: true``) holds one window of pixels instead of the whole clip. Ranges asked for
    in increasing order are decoded once each: the decord reader stays open and seeks, PyAV keeps
    decoding forward from where it stopped. The open readers are dropped when pickled
    (DataLoader workers hand clips to the main process) and reopened on the next decode.
    """

    def __init__(self, path: str, indices: np.ndarray, times: torch.Tensor, native_fps: float, duration: float,
                 backend: str, size: tuple[int, int] | None = None, transform=None) -> None:
        self.path, self.indices, self.times = path, indices, times
        self.native_fps, self.duration = native_fps, duration
        self.backend, self.size, self.transform = backend, size, transform
        self._frame_hw = (int(size[0]), int(size[1])) if size is not None else None
        self.decode_seconds = 0.0  # time spent decoding so far (the benchmark reports it)
        self._reader = None  # decord.VideoReader, opened on first use
        self._av = None  # (container, frame iterator, index of the next frame it yields)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def frame_hw(self) -> tuple[int, int]:
        """(H, W) of the decoded frames: the resize target, else the stream's (read once, on demand)."""
        if self._frame_hw is None:
            if self.backend == "decord":
                if self._reader is None:
                    self._reader = _open_decord(self.path)
                self._frame_hw = tuple(int(x) for x in self._reader[0].shape[:2])
            else:
                self._frame_hw = _av_frame_hw(self.path)
        return self._frame_hw

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.indices), 3, *self.frame_hw)

    def __getstate__(self) -> dict:
        self.close()
        return dict(self.__dict__)

    def close(self) -> None:
        if self._av is not None:
            self._av[0].close()
        self._reader = self._av = None

    def decode(self, t0: int, t1: int) -> torch.Tensor:
        """Frames t0..t1-1 of the clip (clamped to its length) → (n, 3, H, W) uint8."""
        import time

        t0, t1 = max(0, t0), min(len(self.indices), t1)
        if t1 <= t0:
            return torch.zeros(0, 3, *self.frame_hw, dtype=torch.uint8)
        start = time.perf_counter()
        wanted = self.indices[t0:t1]
        unique, inverse = np.unique(wanted, return_inverse=True)
        decoded = self._decode_decord(unique) if self.backend == "decord" else self._decode_av(unique)
        frames = torch.from_numpy(decoded[inverse])  # (n, H, W, 3)
        if self.size is not None:
            frames = resize_frames(frames, self.size)
        frames = frames.permute(0, 3, 1, 2).contiguous()
        if self.transform is not None:
            frames = self.transform(frames)
        self.decode_seconds += time.perf_counter() - start
        return frames

    def _decode_decord(self, unique: np.ndarray) -> np.ndarray:
        try:
            if self._reader is None:
                self._reader = _open_decord(self.path)
            return _decode_decord(self.path, self._reader, unique)
        except _DecordFailure as error:  # FFmpeg reads what decord cannot: PyAV from here on
            _warn_fallback(self.path, error.cause)
            self.backend, self._reader = "av", None
            return self._decode_av(unique)

    def _decode_av(self, unique: np.ndarray) -> np.ndarray:
        import av
        from av.video.reformatter import VideoReformatter

        first = int(unique[0])
        if self._av is None or self._av[2] > first:  # not open yet, or asked to go back: start over
            self.close()
            try:
                container = av.open(self.path)
                self._av = [container, iter(container.decode(container.streams.video[0])), 0, VideoReformatter()]
            except Exception as error:  # noqa: BLE001 - PyAV raises many FFmpegError subclasses
                raise VideoReadError(self.path, _diagnose(self.path, error)) from error
        _, frames, n, to_rgb = self._av
        wanted = {int(i): k for k, i in enumerate(unique)}
        out: list[np.ndarray | None] = [None] * len(unique)
        last = int(unique[-1])
        try:
            while n <= last:
                frame = next(frames, None)
                if frame is None:
                    break
                if n in wanted:
                    out[wanted[n]] = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                n += 1
        except Exception as error:  # noqa: BLE001
            raise VideoReadError(self.path, _diagnose(self.path, error)) from error
        self._av[2] = n
        missing = [int(unique[k]) for k, f in enumerate(out) if f is None]
        if missing:
            raise VideoReadError(self.path, f"stream ended before frames {missing[:5]} (header claims more frames)")
        return np.stack(out)


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
) -> LazyClip:
    """``read_video``'s sampling without the decoding: a ``LazyClip`` that decodes on demand.

    The same checks run up front (missing, empty, image, unreadable header, zero frames), so a
    bad file fails here, naming itself, and not halfway through a window.
    """
    path = os.fspath(path)
    if (num_frames is None) == (fps is None):
        raise ValueError(
            f"open_video({path}): give exactly one of num_frames or fps; got num_frames={num_frames}, fps={fps}"
        )
    _check_backend(backend)
    _check_file(path)
    reader = None
    if backend == "decord":
        try:
            reader = _open_decord(path)
        except _DecordFailure as error:
            _warn_fallback(path, error.cause)
            backend = "av"
    num_total, native_fps = _stream_info(path, reader)
    indices = sample_indices(num_total, native_fps, num_frames, fps, max_frames, start, end)
    times = torch.from_numpy(frame_times(indices, native_fps))  # (T,)
    clip = LazyClip(path, indices, times, native_fps, num_total / native_fps, backend, size, transform)
    clip._reader = reader  # opened once, used for the header and the frames
    return clip


def _av_frame_hw(path: str) -> tuple[int, int]:
    import av

    try:
        with av.open(path) as container:
            ctx = container.streams.video[0].codec_context
            return int(ctx.height), int(ctx.width)
    except Exception as error:  # noqa: BLE001
        raise VideoReadError(path, _diagnose(path, error)) from error


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
