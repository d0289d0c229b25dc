"""The backends: frames of a file by index, a chunk at a time, as (n, H, W, 3) uint8 RGB.

Every backend numbers frames by the shared ``Timeline`` (frame n = the n-th frame shown) and is
asked for sorted, distinct indices; it yields them in order, in chunks of at most ``chunk`` frames,
so the caller can shrink each chunk to the encoder's size before the next is decoded.

- ``DecordReader``: ``VideoReader.get_batch`` per chunk; decord seeks to the group of pictures
  that holds a wanted frame and decodes forward within it. decord turns frames by the display
  rotation itself (``applies_rotation``).
- ``PyAVReader``: decodes forward and converts only the wanted frames to RGB; it seeks only when
  the next wanted frame lies past a keyframe ahead of the decoder (another group of pictures),
  since seeking costs a keyframe decode and seeking for every frame of a dense sample is several
  times slower than decoding through. Frames that no other frame refers to and that are not
  wanted are not decoded at all. Decoded frames are matched to the timeline by timestamp.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from vlc.data.timeline import Timeline
from vlc.data.video_check import VideoReadError, diagnose, is_memory_error, memory_cause, probe, short

log = logging.getLogger(__name__)


class DecordFailure(VideoReadError):
    """decord failed on a file that FFmpeg opens as a video: worth one more try with PyAV."""


def _decord_error(path: str, error: Exception) -> VideoReadError:
    if is_memory_error(error):
        return VideoReadError(path, memory_cause(error))
    cause = probe(path)
    if cause is None:  # FFmpeg opens it: decord's own limitation (e.g. a GIF), so PyAV gets a try
        return DecordFailure(path, f"decord cannot read it ({short(error, path)})")
    return VideoReadError(path, cause)


class DecordReader:
    applies_rotation = True

    def __init__(self, path: str, timeline: Timeline, reader=None) -> None:
        self.path, self.timeline = path, timeline
        self.reader = reader if reader is not None else open_decord(path)
        if len(self.reader) != timeline.num_frames:
            # decord's numbering is not the timeline's: frame n would not be the n-th frame shown.
            raise DecordFailure(path, f"decord counts {len(self.reader)} frames, the stream's timestamps "
                                      f"{timeline.num_frames}")

    def frames(self, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
        for k in range(0, len(indices), chunk):
            part = indices[k : k + chunk]
            try:
                frames = self.reader.get_batch(part.tolist()).asnumpy()  # (n, H, W, 3) uint8
            except Exception as error:  # noqa: BLE001 - decord raises RuntimeError and DECORDError alike
                if "DECORDArrayCopyFromTo" in str(error):
                    # decord 0.6 mishandles padded rows for a few small widths (8, 12, 16, 24, 48,
                    # 72 px): get_batch fails this way. PyAV decodes the same frames.
                    raise DecordFailure(self.path, "decord cannot copy frames of this width (a known decord bug "
                                                   "for some small widths)") from error
                raise _decord_error(self.path, error) from error
            if frames.shape[0] != len(part):
                raise VideoReadError(self.path, f"decoded {frames.shape[0]} frames, expected {len(part)}")
            yield frames

    def close(self) -> None:
        self.reader = None


def open_decord(path: str):
    import decord

    try:
        # One thread per reader: dataloader workers already give the parallelism, and
        # decord's own thread pool per reader oversubscribes small machines.
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as error:  # noqa: BLE001
        raise _decord_error(path, error) from error


class PyAVReader:
    applies_rotation = False

    def __init__(self, path: str, timeline: Timeline, wanted: np.ndarray | None = None) -> None:
        """``wanted``: every frame index this reader will be asked for (default: all frames). Frames
        outside it are left undecoded where nothing refers to them; the decoder reads a few packets
        ahead, so a frame asked for later must be known now."""
        import av
        from av.video.reformatter import VideoReformatter

        self.path, self.timeline = path, timeline
        try:
            self.container = av.open(path)
            self.stream = self.container.streams.video[0]
        except Exception as error:  # noqa: BLE001 - PyAV raises many FFmpegError subclasses
            raise VideoReadError(path, diagnose(path, error)) from error
        # One reformatter for the whole clip: a fresh colour converter per frame costs more than
        # decoding the frame itself.
        self.to_rgb = VideoReformatter()
        self.decoded: Iterator | None = None  # frames from the decoder's position on
        # timestamps of the frames that may be asked for: the only unreferenced frames decoded
        self.wanted = {int(t) for t in (timeline.pts if wanted is None else timeline.pts[np.asarray(wanted)])}
        self.next = 0  # the frame number the decoder yields next
        self.seeks = 0  # seeks so far (tests pin how often it seeks)
        self.gop = timeline.gop

    def frames(self, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
        # One frame at a time: PyAV hands frames over one by one anyway, and stacking them into
        # chunks would only copy full-size pixels once more.
        missing = [int(i) for i in indices if int(self.timeline.pts[i]) not in self.wanted]
        if missing:
            raise ValueError(f"PyAVReader({self.path}): frames {missing[:5]} were not among the wanted frames")
        try:
            for index in indices.tolist():
                yield self._frame(int(index))[None]  # (1, H, W, 3) uint8
        except VideoReadError:
            raise
        except Exception as error:  # noqa: BLE001
            raise VideoReadError(self.path, diagnose(self.path, error)) from error

    def _frame(self, index: int) -> np.ndarray:
        key = self.timeline.keyframe_before(index)
        # Seek when going back, or when the wanted frame is a group of pictures or more ahead and a
        # keyframe lies between; nearer frames are reached faster by decoding on.
        ahead = key > self.next and index - self.next >= self.gop
        if self.decoded is None or index < self.next or ahead:
            self._seek(key)
        while True:
            frame, n = self._decode_next()
            if frame is None:
                raise VideoReadError(self.path, f"stream ended before frame {index} (the file lists "
                                                f"{self.timeline.num_frames} frames)")
            if n == index or n > index:  # n > index: the decoder skipped it; the frame shown after it is nearest
                return self.to_rgb.reformat(frame, format="rgb24").to_ndarray()  # (H, W, 3) uint8

    def _decode_next(self):
        frame = next(self.decoded, None)
        if frame is None:
            return None, self.next
        stamp = frame.pts if frame.pts is not None else frame.dts
        if stamp is None:
            n = self.next  # no timestamp: frames come in presentation order
        else:  # the frame shown at this timestamp
            n = max(0, int(np.searchsorted(self.timeline.pts, int(stamp), side="right")) - 1)
        self.next = n + 1
        return frame, n

    def _seek(self, key: int) -> None:
        """Put the decoder at keyframe ``key`` (or before it): a seek, or a fresh start for the first group."""
        import av

        if key == 0 and self.decoded is None:  # just opened: decode from the start
            self.decoded, self.next = self._decode_from_here(), 0
            return
        if key > 0:
            try:
                self.container.seek(int(self.timeline.pts[key]), backward=True, any_frame=False, stream=self.stream)
                self.seeks += 1
                self.decoded = self._decode_from_here()
                frame, n = self._decode_next()
                if frame is not None and n <= key:  # landed at the keyframe or before it: decode on from there
                    self.decoded, self.next = _prepend(frame, self.decoded), n
                    return
            except av.FFmpegError:  # an unseekable stream: decode from the start instead
                pass
        # The first group of pictures, or a container that landed past the keyframe asked for.
        self.container.close()
        self.container = av.open(self.path)
        self.stream = self.container.streams.video[0]
        self.decoded, self.next = self._decode_from_here(), 0

    def _decode_from_here(self) -> Iterator:
        ctx = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            # A frame no other frame refers to (most B-frames) need not be decoded unless it is
            # wanted: the decoder drops it unseen. Without a timestamp a packet is always decoded.
            ctx.skip_frame = "NONREF" if packet.pts is not None and packet.pts not in self.wanted else "DEFAULT"
            yield from packet.decode()  # the last, empty packet flushes the decoder

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.container = self.decoded = None


def _prepend(frame, rest: Iterator) -> Iterator:
    if frame is not None:
        yield frame
    yield from rest
