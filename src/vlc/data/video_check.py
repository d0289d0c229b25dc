"""Why a video file cannot be read, in words its owner can act on.

Every failure of the decoding code surfaces as a ``VideoReadError`` that names the file and the
cause: missing, a symlink loop, not a regular file (a FIFO, a device), zero bytes, a still image,
no video stream, no decoder for the codec, zero frames, corrupt or truncated, out of memory.
``file_problem`` runs the checks that need no decoding (cheap enough for every file of a dataset
before training); ``probe`` and ``diagnose`` turn a backend's failure into one of these causes.
"""

from __future__ import annotations

import errno
import os
import re
import stat


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


NO_DECODER = "no decoder for its video codec (unknown or unsupported by this FFmpeg build)"

# What ``os.stat`` says a path is, for everything that is not a regular file or a directory.
_NOT_REGULAR = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a video, from the file system and its first bytes alone; None if it may be.

    Cheap enough to run on every file of a dataset before training (``data.check_files``). Never
    opens anything but a regular file: reading a FIFO would block for ever, and a device such as
    ``/dev/zero`` never ends.
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except OSError as error:
        return _stat_problem(path, error)
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, expected a video file"
    for test, kind in _NOT_REGULAR:
        if test(info.st_mode):
            return f"not a regular file ({kind})"
    if info.st_size == 0:
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


def _stat_problem(path: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if error.errno == errno.ENOENT:
        if os.path.islink(path):
            return f"broken symlink (its target {os.readlink(path)} does not exist)"
        return "missing file (no such path)"
    if error.errno == errno.ENOTDIR:
        return "missing file (a part of the path is not a directory)"
    return f"cannot stat the file ({error.strerror or error})"


# Signatures of still-image formats that FFmpeg would otherwise open as a one-frame "video" at a
# made-up 25 fps. GIF is left out: animated GIFs are videos in some datasets (e.g. TGIF). Other
# image formats are caught when the file is opened (FFmpeg's image demuxers, ``is_still_image``).
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


def check_file(path: str) -> None:
    problem = file_problem(path)
    if problem is not None:
        raise VideoReadError(path, problem)


def is_still_image(container) -> bool:
    # FFmpeg's image demuxers: "png_pipe", "jpeg_pipe", "bmp_pipe", … and "image2".
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


# decord prefixes its messages with a timestamp and its own source location, e.g.
# "[04:43:45] .../video_reader.cc:151: Check failed: …": noise to whoever owns the video.
_DECORD_NOISE = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+?\.(?:cc|h|cpp):\d+: ")


def short(error: BaseException, path: str = "") -> str:
    """The last line of a backend's message, without decord's noise or a repeat of the path."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()] or [""]
    text = _DECORD_NOISE.sub("", lines[-1]).replace(f": '{path}'", "").replace(f"[{path}] ", "").strip()
    return f"{type(error).__name__}: {text[:300]}"


def probe(path: str) -> str | None:
    """Why FFmpeg (through PyAV) sees no readable video in ``path``; None when it opens one."""
    import av

    try:
        with av.open(path) as container:
            if is_still_image(container):
                return f"a still image ({container.format.name}), not a video"
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams})
                return "no video stream in the file" + (f" (only {', '.join(kinds)})" if kinds else "")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                return NO_DECODER
            if not stream.frames and not any(packet.size > 0 for packet in container.demux(stream)):
                return "zero frames in the video stream (zero duration)"
    except Exception as probe_error:  # noqa: BLE001 - any failure to open means corrupt/unknown
        return f"cannot open: file corrupt, truncated or not a video ({short(probe_error, path)})"
    return None


def is_memory_error(error: BaseException) -> bool:
    """An allocation failure, whichever layer reports it (Python, FFmpeg's ENOMEM, decord's C++)."""
    if isinstance(error, MemoryError):  # also PyAV's av.error.MemoryError (ENOMEM)
        return True
    text = str(error)
    return "bad_alloc" in text or "Cannot allocate memory" in text or "out of memory" in text.lower()


def memory_cause(error: BaseException) -> str:
    return (f"out of memory while decoding ({short(error)}); the file may well be fine: lower data.num_frames "
            f"or data.frame_size, or use fewer data.num_workers")


def diagnose(path: str, error: BaseException) -> str:
    """A readable cause for a backend failure: the backends' own messages rarely say what is wrong."""
    if is_memory_error(error):  # not the file's fault: say so, not "corrupt"
        return memory_cause(error)
    return probe(path) or f"cannot decode: file corrupt or truncated ({short(error, path)})"
