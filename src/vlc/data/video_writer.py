"""Write test videos with PyAV: exact per-frame timestamps (variable frame rate), a display rotation,
a chosen codec and container, a chosen keyframe interval, and frames that carry their own number.

Used by the decoding tests and ``scripts/bench_decode.py`` to make the odd files real datasets hold
(a phone's rotated mp4, a screen recording's variable frame rate, VP9 webm, MJPEG avi) without
shipping any.
"""

from __future__ import annotations

import fractions
import math
import struct
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BITS = 8  # frame numbers 0..255 in ``numbered_frames``


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 4.0,
    times: Sequence[float] | None = None,
    rotation: int = 0,
    codec: str = "libx264",
    container_format: str | None = None,
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode (T, H, W, 3) uint8 RGB ``frames``.

    ``times``: each frame's presentation time in seconds (milliseconds are kept exactly), for a
    variable frame rate; otherwise frames are ``1 / fps`` apart. ``rotation``: degrees
    counter-clockwise that a player turns the frames by (the container's display matrix).
    ``gop``: frames between keyframes (the encoder's default when None).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video({path}): frames {frames.shape} {frames.dtype}, expected (T, H, W, 3) uint8")
    if times is not None and len(times) != len(frames):
        raise ValueError(f"write_video({path}): {len(times)} times for {len(frames)} frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(os.fspath(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        opts = {"crf": "10", "threads": "1"} if codec == "libx264" else {"threads": "1"}
        if codec == "libvpx-vp9":
            opts.update({"crf": "10", "b:v": "0", "deadline": "realtime", "cpu-used": "8"})
        stream.options = {**opts, **(options or {})}
        if gop is not None:
            stream.codec_context.gop_size = gop
        if times is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation and hasattr(stream, "set_display_rotation"):  # PyAV >= 16
            stream.set_display_rotation(rotation)
            rotation = 0
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = int(round(times[i] * 1000)), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if rotation:  # older PyAV cannot set the display matrix: write it into the track header
        _set_track_rotation(path, rotation)
    return path


_IDENTITY = struct.pack(">9i", 1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def _set_track_rotation(path: Path, degrees: int) -> None:
    """Write a display matrix for ``degrees`` into the mp4's track header (``tkhd``), where players
    and FFmpeg read a video's rotation from; it reads back as ``degrees`` (frame.rotation), as
    PyAV 16's ``set_display_rotation`` writes it."""
    radians = math.radians(degrees)
    c, s = round(math.cos(radians) * (1 << 16)), round(math.sin(radians) * (1 << 16))
    matrix = struct.pack(">9i", c, -s, 0, s, c, 0, 0, 0, 1 << 30)
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    found = data.find(_IDENTITY, at) if at >= 0 else -1
    if found < 0 or found - at > 96:
        raise ValueError(f"write_video({path}): no track header to set rotation={degrees} in (mp4/mov only)")
    data[found:found + len(_IDENTITY)] = matrix
    path.write_bytes(bytes(data))


def numbered_frames(count: int, height: int = 64, width: int = 64, corner: bool = True) -> np.ndarray:
    """(count, H, W, 3) uint8 frames that say which frame they are: frame i's number in binary as
    ``BITS`` horizontal bands (white = 1, black = 0) across the middle columns, and a red block in
    the top-left corner (``corner``) that shows which way is up after rotation. ``read_number``
    reads it back through any codec."""
    if count > 2**BITS:
        raise ValueError(f"numbered_frames: {count} frames, at most {2 ** BITS}")
    frames = np.full((count, height, width, 3), 60, dtype=np.uint8)
    band = height // BITS
    for i in range(count):
        for b in range(BITS):
            if i >> b & 1:
                frames[i, b * band : (b + 1) * band, width // 4 : 3 * width // 4] = 255
    if corner:
        s = max(4, min(height, width) // 8)
        frames[:, :s, :s] = (230, 20, 20)
    return frames


def read_number(frame: np.ndarray) -> int:
    """The number ``numbered_frames`` drew on an upright (H, W, 3) frame."""
    height, width = frame.shape[:2]
    band = height // BITS
    grey = np.asarray(frame, dtype=np.float64).mean(-1)
    middle = grey[:, width // 4 + 2 : 3 * width // 4 - 2]
    return sum(1 << b for b in range(BITS) if middle[b * band + 1 : (b + 1) * band - 1].mean() > 157)
