"""A video stream's frames in presentation order: when each is shown, where decoding can start, which way is up.

Read once per file from the container's packets (demuxing only, no decoding but of one frame for
the display rotation), and shared by every backend, so decord, PyAV and any other reader sample
the same frames and report the same times:

- ``pts``: each frame's presentation timestamp, in ticks of ``time_base``, sorted. Frame ``n`` is
  the n-th frame shown, the numbering decord uses and the order decoders return frames in. A
  variable-frame-rate file keeps its true times here; ``index / average fps`` would not.
- ``end``: the tick at which the last frame stops being shown. Containers rarely say (and mp4's
  packet durations are decode-order deltas, wrong for the last frame of a VFR file), so the last
  frame lasts the median frame interval; for a constant rate this makes ``duration`` exactly
  ``num_frames / fps``, as before.
- ``keyframe``: frames a decoder can start from; PyAV seeks only where the next sampled frame lies
  past a keyframe ahead of where it is (the next group of pictures), and decodes forward otherwise.
- ``rotation``: the display matrix's rotation in degrees counter-clockwise (0, 90, 180, 270), as
  players apply it; vlc returns frames the way a player shows them, whatever the backend.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from vlc.data.video_check import NO_DECODER, VideoReadError, diagnose, is_still_image


# PyAV exposes the display matrix on decoded frames only: the first frame is decoded for it, trying at
# most this many packets (a decoder holds a few back when frames are reordered).
ROTATION_PACKETS = 32


@dataclass(frozen=True)
class Timeline:
    pts: np.ndarray  # (n,) int64 ticks, presentation order, strictly increasing
    end: int  # tick at which the last frame ends
    time_base: Fraction  # seconds per tick
    keyframe: np.ndarray  # (n,) bool
    rotation: int  # degrees counter-clockwise: 0, 90, 180 or 270
    coded_hw: tuple[int, int]  # (H, W) as stored, before rotation
    average_fps: float  # the stream's own average rate (frames per second)

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        return float((self.end - int(self.pts[0])) * self.time_base)

    @property
    def display_hw(self) -> tuple[int, int]:
        """(H, W) of the frames as shown, after the rotation."""
        h, w = self.coded_hw
        return (w, h) if self.rotation in (90, 270) else (h, w)

    def seconds(self, indices: np.ndarray) -> np.ndarray:
        """(T,) float32 seconds of frames ``indices`` from the first frame: their true presentation times."""
        ticks = self.pts[np.asarray(indices, dtype=np.int64)] - self.pts[0]
        num, den = self.time_base.numerator, self.time_base.denominator
        return (ticks.astype(np.float64) * num / den).astype(np.float32)

    @property
    def gop(self) -> int:
        """Frames per group of pictures: the median keyframe interval (the whole stream if one keyframe)."""
        marked = np.flatnonzero(self.keyframe)
        return int(np.median(np.diff(marked))) if len(marked) > 1 else self.num_frames

    def keyframe_before(self, index: int) -> int:
        """The last keyframe at or before frame ``index`` (frame 0 when none is marked)."""
        marked = np.flatnonzero(self.keyframe[: index + 1])
        return int(marked[-1]) if len(marked) else 0


def read_timeline(path: str) -> Timeline:
    """The timeline of the first video stream of ``path``; a ``VideoReadError`` naming the cause if there is none.

    Kept for the last ``TIMELINES_KEPT`` files (per process), keyed by size and modification time,
    so a dataset's next epoch does not demux its videos again (about 14 µs a frame: 1.4 s for a
    100k-frame video). Failures are not kept.
    """
    info = os.stat(path)
    return _read_timeline(path, info.st_size, info.st_mtime_ns)


TIMELINES_KEPT = 256  # about 9 bytes a frame each


@functools.lru_cache(maxsize=TIMELINES_KEPT)
def _read_timeline(path: str, size: int, mtime_ns: int) -> Timeline:
    import av

    try:
        with av.open(path) as container:
            if is_still_image(container):
                raise VideoReadError(path, f"a still image ({container.format.name}), not a video")
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams})
                only = f" (only {', '.join(kinds)})" if kinds else ""
                raise VideoReadError(path, f"no video stream in the file{only}")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise VideoReadError(path, NO_DECODER)
            ctx = stream.codec_context
            coded_hw = (int(ctx.height), int(ctx.width))
            header_frames, rate = int(stream.frames or 0), stream.average_rate or stream.guessed_rate
            pts, dts, durations, keys, rotation = [], [], [], [], None
            for packet in container.demux(stream):
                if not packet.size:  # the flush packet at the end
                    continue
                pts.append(packet.pts)
                dts.append(packet.dts)
                durations.append(packet.duration or 0)
                keys.append(bool(packet.is_keyframe))
                if rotation is None and len(pts) <= ROTATION_PACKETS:
                    rotation = _first_frame_rotation(packet)
            time_base = Fraction(stream.time_base) if stream.time_base else None
    except VideoReadError:
        raise
    except Exception as error:  # noqa: BLE001 - PyAV raises many FFmpegError subclasses
        raise VideoReadError(path, diagnose(path, error)) from error
    if not pts:
        raise VideoReadError(path, "zero frames in the video stream (zero duration)")
    if header_frames > len(pts) and _is_mp4(path):
        # mp4 lists every frame in its index: fewer packets than listed means the data was cut off.
        raise VideoReadError(path, f"cannot decode: file corrupt or truncated (the index lists {header_frames} "
                                   f"frames, {len(pts)} are in the file)")
    return _build(pts, dts, durations, keys, time_base, float(rate) if rate else 0.0, rotation or 0, coded_hw)


def _is_mp4(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(12)[4:8] == b"ftyp"


def _first_frame_rotation(packet) -> int | None:
    """The display rotation of the first frame this packet decodes to; None while the decoder holds it back."""
    try:
        frames = packet.decode()
    except Exception:  # noqa: BLE001 - a broken first packet is reported when frames are decoded
        return 0
    for frame in frames:
        return int(round(frame.rotation / 90)) * 90 % 360
    return None


def _build(pts, dts, durations, keys, time_base, rate, rotation, coded_hw) -> Timeline:
    stamps = pts if all(p is not None for p in pts) else dts
    if time_base is None or any(s is None for s in stamps):
        # No timestamps to trust (rare raw streams): frames at the stream's nominal rate.
        if not rate > 0:
            rate = 25.0
        time_base = Fraction(rate).limit_denominator(1_000_000) ** -1
        stamps = list(range(len(pts)))
    order = np.argsort(np.asarray(stamps, dtype=np.int64), kind="stable")
    ticks = np.asarray(stamps, dtype=np.int64)[order]
    keyframe = np.asarray(keys, dtype=bool)[order]
    if len(ticks) > 1 and np.any(np.diff(ticks) <= 0):
        ticks = _strictly_increasing(ticks)
    if len(ticks) > 1:
        last = int(np.median(np.diff(ticks)))
    else:
        packet_ticks = int(durations[0] or 0)
        last = packet_ticks if packet_ticks > 0 else max(1, round(1 / (rate * time_base))) if rate > 0 else 1
    if not rate > 0:
        rate = len(ticks) / float((int(ticks[-1]) + last - int(ticks[0])) * time_base)
    ticks.setflags(write=False)  # shared by every clip of the file (the cache): nobody may change it
    keyframe.setflags(write=False)
    return Timeline(ticks, int(ticks[-1]) + max(1, last), time_base, keyframe, rotation, coded_hw, float(rate))


def _strictly_increasing(ticks: np.ndarray) -> np.ndarray:
    """Repeated timestamps (a broken muxer) nudged one tick apart, so every frame keeps a distinct time."""
    out = ticks.copy()
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            out[i] = out[i - 1] + 1
    return out


def cfr_timeline(num_frames: int, fps: float, hw: tuple[int, int] = (0, 0)) -> Timeline:
    """The timeline of ``num_frames`` frames at a constant ``fps`` (frame folders, tests)."""
    if num_frames < 1:
        raise ValueError(f"cfr_timeline: num_frames={num_frames}, expected at least 1")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"cfr_timeline: fps={fps}, expected > 0")
    base = Fraction(fps).limit_denominator(1_000_000) ** -1
    return Timeline(np.arange(num_frames, dtype=np.int64), num_frames, base, np.ones(num_frames, dtype=bool),
                    0, hw, float(fps))
