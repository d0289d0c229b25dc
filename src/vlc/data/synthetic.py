"""The built-in synthetic benchmark: real H.264 videos plus multiple-choice JSON.

Three task families after VNBench, plus a temporal grounding one, each a question whose answer
lives in a few frames of a long, uninformative "haystack":

- **needle**: one frame (or a short clip, ``needle_frames``) shows a large, clearly coloured shape;
  "What color is the shape that appears briefly in the video?"
- **order**: two differently coloured shapes appear at two different times;
  "Which color appeared first?"
- **count**: a red shape flashes k ∈ {1, 2, 3, 4} times in non-adjacent frames;
  "How many times does the red shape appear?"
- **ground**: a red circle is shown during one contiguous span of 2 … num_frames//4 frames;
  "When does the red circle appear?", answered by the span in seconds, ``"2.5-4.0"`` (start = the
  first red frame's timestamp, end = the timestamp just after the last). The other 3 candidates
  are spans of the same length at other positions, so it is scored as multiple choice like the
  others, and ``meta["span"]`` holds the true span as numbers for ``vlc.evaluation.grounding``.

The haystack is grey on purpose: textured noise and slowly drifting grey blobs, no colour
anywhere, so no frame but the event frames says anything about the answer, and a model (or a
compressor) must keep the one informative frame out of many. Frames change a little from one to
the next, so pixel-difference pruning has something real to do.

Generation is seeded per sample (seed, split, index), so it is reproducible and does not depend
on the order samples are made in. ``ensure_synthetic`` caches a dataset under a directory named by
a hash of its parameters and publishes it by an atomic rename only once complete.
"""

from __future__ import annotations

import fractions
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vlc.tokens import format_seconds

log = logging.getLogger(__name__)

# Bumped whenever generation changes, so caches made by older code are not reused.
GENERATOR_VERSION = 2

# Eight well-separated hues that stay apart after yuv420p H.264 at 32×32 (tests check this).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 230),
    "yellow": (235, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 220),
    "orange": (245, 140, 20),
    "purple": (120, 40, 200),
}
COLORS = tuple(PALETTE)
SHAPES = ("square", "circle")
TASKS = ("needle", "order", "count", "ground")
# Event shapes span this fraction of the frame side (lo, hi). The default fills the frame: a brief
# full-frame flash of colour, so each event frame is unmistakable on its own and the difficulty is
# purely *finding* it among the haystack frames. Smaller shapes (e.g. [0.33, 0.5]) also test how
# much spatial detail a compressor keeps, and take a tiny model from scratch far longer to learn.
SHAPE_SIZE = (1.0, 1.0)
TASK_PARAMS = {
    "needle": {"needle_frames", "depth", "color", "shape_size"},
    "order": {"needle_frames", "shape_size"},
    "count": {"needle_frames", "count", "shape_size"},
    # needle_frames is accepted (ensure_synthetic passes it to every task) but unused: the span's
    # length is drawn per sample, or fixed by span_frames.
    "ground": {"needle_frames", "span_frames", "start", "shape_size"},
}

QUESTIONS = {
    "needle": "What color is the shape that appears briefly in the video?",
    "order": "Which color appeared first?",
    "count": "How many times does the red shape appear?",
    "ground": "When does the red circle appear?",
}
COUNT_CHOICES = ["1", "2", "3", "4"]
GROUND_MIN_SPAN = 2  # frames: a single red frame would make grounding the needle task again

# Low CRF: at 32×32 the chroma planes are 16×16, and the default CRF 23 washes colours out.
CRF = 10


# --------------------------------------------------------------------------------------------
# Frames


def make_haystack(num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(T, S, S, 3) uint8 grey frames: a fixed texture, drifting blobs and a little fresh noise."""
    _check_size(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (S, S)
    # Smooth texture: coarse noise upsampled, so it looks like a surface rather than static.
    coarse = rng.normal(0.0, 1.0, (size // 4 + 2, size // 4 + 2)).astype(np.float32)
    texture = np.kron(coarse, np.ones((4, 4), np.float32))[:size, :size]
    base = rng.uniform(90, 150) + 18.0 * texture  # (S, S)
    # Blobs drift linearly and bounce off the borders: slow, content-free motion.
    num_blobs = int(rng.integers(2, 5))
    pos = rng.uniform(0, size, (num_blobs, 2))
    vel = rng.uniform(-0.6, 0.6, (num_blobs, 2)) * size / 32
    amp = rng.uniform(25, 50, num_blobs) * rng.choice([-1.0, 1.0], num_blobs)
    sigma = rng.uniform(0.10, 0.22, num_blobs) * size
    frames = np.empty((num_frames, size, size), np.float32)
    for t in range(num_frames):
        p = pos + vel * t
        p = np.abs((p + size) % (2 * size) - size)  # reflect into [0, size]
        img = base.copy()
        for b in range(num_blobs):
            d2 = (yy - p[b, 0]) ** 2 + (xx - p[b, 1]) ** 2
            img += amp[b] * np.exp(-d2 / (2 * sigma[b] ** 2))
        img += rng.normal(0.0, 3.0, (size, size))
        frames[t] = img
    grey = np.clip(np.rint(frames), 0, 255).astype(np.uint8)  # (T, S, S)
    return np.repeat(grey[..., None], 3, axis=-1)  # (T, S, S, 3): R = G = B, zero saturation


def draw_shape(
    frame: np.ndarray,
    color: str,
    rng: np.random.Generator,
    shape: str | None = None,
    shape_size: tuple[float, float] = SHAPE_SIZE,
) -> dict[str, Any]:
    """Draw a filled square or circle whose side is a ``shape_size`` fraction of the frame, in place;
    return where."""
    if color not in PALETTE:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    size = frame.shape[0]
    shape = shape or str(rng.choice(SHAPES))
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    lo, hi = (float(f) for f in shape_size)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"shape_size={list(shape_size)}, expected fractions 0 < lo <= hi <= 1 of the frame side")
    side = int(rng.integers(max(1, round(size * lo)), max(1, round(size * hi)) + 1))
    y0 = int(rng.integers(0, size - side + 1))
    x0 = int(rng.integers(0, size - side + 1))
    box = [y0, x0, y0 + side, x0 + side]  # y0, x0, y1, x1
    paint_shape(frame, color, shape, box)
    return {"shape": shape, "box": box}


def paint_shape(frame: np.ndarray, color: str, shape: str, box: list[int]) -> None:
    """Fill ``shape`` inscribed in ``box`` (y0, x0, y1, x1) of a (H, W, 3) frame, in place."""
    y0, x0, y1, x1 = box
    if shape == "square":
        frame[y0:y1, x0:x1] = PALETTE[color]
        return
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
    ry, rx = (y1 - y0) / 2, (x1 - x0) / 2
    disk = ((yy + 0.5 - ry) / ry) ** 2 + ((xx + 0.5 - rx) / rx) ** 2 <= 1.0  # (h, w)
    frame[y0:y1, x0:x1][disk] = PALETTE[color]


def make_needle_frames(
    num_frames: int,
    depth: float,
    color: str,
    size: int,
    rng: np.random.Generator,
    needle_frames: int = 1,
    shape: str | None = None,
    shape_size: tuple[float, float] = SHAPE_SIZE,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A haystack with one coloured shape shown for ``needle_frames`` frames from int(N·depth).

    Returns ``(frames (T, S, S, 3) uint8, meta)``; the clip is moved earlier if it would run past
    the end, so a depth near 1 still shows every needle frame.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"needle depth={depth}, expected a fraction in [0, 1]")
    if not 1 <= needle_frames <= num_frames:
        raise ValueError(f"needle_frames={needle_frames}, expected 1 … num_frames={num_frames}")
    frames = make_haystack(num_frames, size, rng)
    index = min(int(num_frames * depth), num_frames - needle_frames)
    where = draw_shape(frames[index], color, rng, shape, shape_size)
    for t in range(index + 1, index + needle_frames):  # a short clip: the same shape, held still
        paint_shape(frames[t], color, where["shape"], where["box"])
    meta = {
        "length": num_frames,
        "depth": float(depth),
        "needle_index": index,
        "needle_frames": needle_frames,
        "color": color,
        **where,
        "event_indices": list(range(index, index + needle_frames)),
    }
    return frames, meta


def format_span(start: float, end: float) -> str:
    """A span in seconds as the ground task's answer text, ``"2.5-4.0"``; read back by
    ``vlc.evaluation.grounding.parse_span``."""
    return f"{format_seconds(start)}-{format_seconds(end)}"


def make_ground_frames(
    num_frames: int,
    size: int,
    rng: np.random.Generator,
    fps: float = 4.0,
    span_frames: int | None = None,
    start: int | None = None,
    shape_size: tuple[float, float] = SHAPE_SIZE,
) -> tuple[np.ndarray, list[str], str, dict[str, Any]]:
    """A haystack with a red circle held still on frames ``start … start + span_frames - 1``.

    ``span_frames`` defaults to uniform over 2 … max(2, num_frames // 4) and ``start`` to uniform
    over the positions where the span fits. Returns ``(frames, candidates, answer, meta)``: the
    answer is ``format_span`` of ``meta["span"] = [start / fps, (start + span_frames) / fps]``, and
    the other 3 candidates are spans of the same length at other starts, so the options differ
    only in *where* the span is and a model must locate it rather than measure its length.
    """
    if not float(fps) > 0:
        raise ValueError(f"ground task: fps={fps}, expected > 0")
    if span_frames is None:
        span_frames = int(rng.integers(GROUND_MIN_SPAN, max(GROUND_MIN_SPAN, num_frames // 4) + 1))
    span_frames = int(span_frames)
    positions = num_frames - span_frames + 1  # starts where the span fits
    if span_frames < 1 or positions < 4:
        raise ValueError(
            f"ground task: span_frames={span_frames} in num_frames={num_frames} leaves {max(positions, 0)} "
            f"span positions; need >= 4 (the answer and 3 distractors), e.g. num_frames >= {span_frames + 3}"
        )
    start = int(rng.integers(positions)) if start is None else int(start)
    if not 0 <= start < positions:
        raise ValueError(
            f"ground task: start={start}, expected 0 … {positions - 1} for a span of {span_frames} frames"
        )

    def span(s: int) -> list[float]:
        return [round(s / fps, 6), round((s + span_frames) / fps, 6)]

    answer = format_span(*span(start))
    # Distractor starts in random order, skipping any whose text matches one already taken (only
    # possible at very high fps, where two frames round to the same hundredth of a second).
    picked = [answer]
    for other in rng.permutation(positions):
        text = format_span(*span(int(other)))
        if text not in picked:
            picked.append(text)
        if len(picked) == 4:
            break
    if len(picked) < 4:
        raise ValueError(f"ground task: fewer than 4 distinct span texts at fps={fps}; lower data.synthetic.fps")
    candidates = [picked[i] for i in rng.permutation(4)]

    frames = make_haystack(num_frames, size, rng)
    where = draw_shape(frames[start], "red", rng, "circle", shape_size)
    for t in range(start + 1, start + span_frames):  # the same circle, held still
        paint_shape(frames[t], "red", where["shape"], where["box"])
    meta = {
        "length": num_frames,
        "span": span(start),
        "span_frames": span_frames,
        "start_index": start,
        "color": "red",
        **where,
        "event_indices": list(range(start, start + span_frames)),
    }
    return frames, candidates, answer, meta


def make_video_frames(
    task: str, rng: np.random.Generator, num_frames: int, size: int, fps: float = 4.0, **task_params: Any
) -> tuple[np.ndarray, str, list[str], str, dict[str, Any]]:
    """One sample of ``task``: ``(frames (T, S, S, 3) uint8, question, candidates, answer, meta)``.

    task_params: ``needle_frames`` (needle and order: frames each event lasts), and
    needle: ``depth`` (default uniform in [0, 1)), ``color`` (default uniform over the palette);
    count: ``count`` (default uniform over 1…4); ground: ``span_frames``, ``start`` (see
    ``make_ground_frames``). ``fps`` is the rate the video will be written at: only ground uses it,
    for the seconds in its answer. ``meta["event_indices"]`` lists the frames holding the answer,
    for every task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {TASKS}")
    allowed = TASK_PARAMS[task]
    unknown = set(task_params) - allowed
    if unknown:
        raise TypeError(f"synthetic task {task!r} got unknown parameters {sorted(unknown)}; allowed: {sorted(allowed)}")
    needle_frames = int(task_params.get("needle_frames", 1))
    shape_size = tuple(task_params.get("shape_size") or SHAPE_SIZE)

    if task == "needle":
        depth = task_params.get("depth")
        depth = float(rng.uniform(0.0, 1.0)) if depth is None else float(depth)
        color = task_params.get("color") or str(rng.choice(COLORS))
        frames, meta = make_needle_frames(num_frames, depth, color, size, rng, needle_frames, shape_size=shape_size)
        candidates = _candidates([color], rng)
        return frames, QUESTIONS["needle"], candidates, color, meta

    if task == "order":
        if num_frames < 2 * needle_frames + 1:
            need = 2 * needle_frames + 1
            raise ValueError(f"order task needs num_frames >= 2*needle_frames+1 = {need}, got {num_frames}")
        first, second = (str(c) for c in rng.choice(COLORS, size=2, replace=False))
        # Two clips of needle_frames with at least one haystack frame between them. Pairs a < b
        # in [0, T - 2L] map one-to-one onto such layouts (second start = b + L), so every
        # layout is equally likely.
        a, b = sorted(int(i) for i in rng.choice(num_frames - 2 * needle_frames + 1, size=2, replace=False))
        starts = [a, b + needle_frames]
        frames = make_haystack(num_frames, size, rng)
        wheres = []
        for start, color in zip(starts, (first, second)):
            where = draw_shape(frames[start], color, rng, None, shape_size)
            for t in range(start + 1, start + needle_frames):
                paint_shape(frames[t], color, where["shape"], where["box"])
            wheres.append(where)
        meta = {
            "length": num_frames,
            "colors": [first, second],
            "starts": starts,
            "needle_frames": needle_frames,
            "shapes": [w["shape"] for w in wheres],
            "boxes": [w["box"] for w in wheres],
            "event_indices": [s + k for s in starts for k in range(needle_frames)],
        }
        candidates = _candidates([first, second], rng)
        return frames, QUESTIONS["order"], candidates, first, meta

    if task == "ground":
        frames, candidates, answer, meta = make_ground_frames(
            num_frames, size, rng, fps, task_params.get("span_frames"), task_params.get("start"), shape_size
        )
        return frames, QUESTIONS["ground"], candidates, answer, meta

    # count: single-frame flashes, never adjacent, so two flashes never read as one long one.
    count = task_params.get("count")
    count = int(rng.integers(1, 5)) if count is None else int(count)
    if not 1 <= count <= 4:
        raise ValueError(f"count={count}, expected 1 … 4")
    if num_frames < 2 * count - 1:
        raise ValueError(f"count task needs num_frames >= 2*count-1 = {2 * count - 1}, got {num_frames}")
    # k sorted distinct slots among T-k+1, then slot j moves right by j: gaps of at least 2.
    slots = np.sort(rng.choice(num_frames - count + 1, size=count, replace=False))
    indices = [int(s) + j for j, s in enumerate(slots)]
    frames = make_haystack(num_frames, size, rng)
    shape = str(rng.choice(SHAPES))
    boxes = [draw_shape(frames[i], "red", rng, shape, shape_size)["box"] for i in indices]
    meta = {
        "length": num_frames,
        "count": count,
        "color": "red",
        "shape": shape,
        "boxes": boxes,
        "event_indices": indices,
    }
    return frames, QUESTIONS["count"], list(COUNT_CHOICES), str(count), meta


def _candidates(required: list[str], rng: np.random.Generator, total: int = 4) -> list[str]:
    """``required`` colours plus others up to ``total``, shuffled so the answer's slot is random."""
    others = [c for c in COLORS if c not in required]
    picked = list(required) + [str(c) for c in rng.choice(others, size=total - len(required), replace=False)]
    return [picked[i] for i in rng.permutation(total)]


def _check_size(size: int) -> None:
    # yuv420p stores chroma at half resolution, so libx264 needs even sides.
    if size < 8 or size % 2:
        raise ValueError(f"synthetic frame_size={size}, expected an even number >= 8 (yuv420p needs even sides)")


# --------------------------------------------------------------------------------------------
# Files


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = CRF) -> None:
    """Write (T, H, W, 3) uint8 RGB frames as H.264 yuv420p mp4 at a constant ``fps``."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4({path}): frames {frames.shape} {frames.dtype}, expected (T, H, W, 3) uint8")
    T, H, W, _ = frames.shape
    if T < 1 or H % 2 or W % 2:
        raise ValueError(f"write_mp4({path}): {T} frames of {H}×{W}; need >= 1 frame and even height and width")
    rate = fractions.Fraction(fps).limit_denominator(1001)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        # One thread: x264's output then depends only on the input, and workers parallelise anyway.
        stream.options = {"crf": str(crf), "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)


def sample_rng(seed: int, split: str, *index: int) -> np.random.Generator:
    """The generator of one sample: a function of (seed, split, index) only."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), *(int(i) for i in index)])


def synthetic_dir(
    root: str | os.PathLike,
    task: str = "needle",
    num_frames: int = 32,
    frame_size: int = 32,
    fps: float = 4.0,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    needle_frames: int = 1,
    shape_size: tuple[float, float] | list[float] = SHAPE_SIZE,
) -> Path:
    """Where ``ensure_synthetic`` keeps the dataset with these parameters (whether made yet or not)."""
    params = _synthetic_params(task, num_frames, frame_size, fps, num_train, num_val, seed, needle_frames, shape_size)
    return Path(root) / f"{task}-{_params_hash(params)}"


def ensure_synthetic(
    root: str | os.PathLike,
    task: str = "needle",
    num_frames: int = 32,
    frame_size: int = 32,
    fps: float = 4.0,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    needle_frames: int = 1,
    shape_size: tuple[float, float] | list[float] = SHAPE_SIZE,
) -> Path:
    """Generate the dataset into ``root/<task>-<hash of params>/`` unless it is already there.

    The directory holds ``train.json`` and ``val.json`` (``read_mc_json`` format, video paths
    relative to the JSON), ``params.json`` and ``videos/<split>/<index>.mp4``.
    """
    params = _synthetic_params(task, num_frames, frame_size, fps, num_train, num_val, seed, needle_frames, shape_size)
    final = Path(root) / f"{task}-{_params_hash(params)}"
    if final.is_dir():
        return final

    def build(tmp: Path) -> None:
        for split, count in (("train", num_train), ("val", num_val)):
            samples = []
            for i in tqdm(range(count), desc=f"synthetic {task} {split}", unit="video"):
                rng = sample_rng(seed, split, i)
                frames, question, candidates, answer, meta = make_video_frames(
                    task, rng, num_frames, frame_size, fps, needle_frames=needle_frames, shape_size=tuple(shape_size)
                )
                rel = f"videos/{split}/{i:06d}.mp4"
                write_mp4(tmp / rel, frames, fps)
                meta["event_times"] = [round(j / fps, 6) for j in meta["event_indices"]]
                samples.append(_mc_item(f"{task}-{split}-{i:06d}", rel, question, candidates, answer, task, meta))
            _write_json(tmp / f"{split}.json", samples)

    log.info("generating synthetic %s data into %s", task, final)
    _build_atomically(final, params, build)
    return final


def ensure_needle_grid(
    root: str | os.PathLike,
    lengths: list[int],
    depths: list[float],
    num_per_cell: int = 4,
    size: int = 32,
    fps: float = 4.0,
    seed: int = 0,
    needle_frames: int = 1,
    shape_size: tuple[float, float] | list[float] = SHAPE_SIZE,
) -> Path:
    """A needle-in-a-haystack grid: ``num_per_cell`` needle videos per (length, depth) cell.

    Returns the path of the grid's MC JSON (``grid.json``) in ``root/niah-<hash>/``; every sample's
    ``meta`` carries ``length`` (frames in the video) and ``depth`` (where the needle sits), the
    axes of a NIAH heatmap. Colours cycle through the palette within a cell, so every cell asks
    about the same mix of colours.
    """
    lengths = [int(n) for n in lengths]
    depths = [float(d) for d in depths]
    if not lengths or not depths:
        raise ValueError(f"ensure_needle_grid: lengths={lengths} and depths={depths} must both be non-empty")
    params = {
        "kind": "needle_grid",
        "lengths": lengths,
        "depths": depths,
        "num_per_cell": int(num_per_cell),
        "size": int(size),
        "fps": float(fps),
        "seed": int(seed),
        "needle_frames": int(needle_frames),
        "shape_size": [float(f) for f in shape_size],
        "version": GENERATOR_VERSION,
    }
    final = Path(root) / f"niah-{_params_hash(params)}"
    if final.is_dir():
        return final / "grid.json"

    def build(tmp: Path) -> None:
        samples = []
        cells = [(n, d) for n in lengths for d in depths]
        bar = tqdm(total=len(cells) * num_per_cell, desc="needle grid", unit="video")
        for length in lengths:
            for di, depth in enumerate(depths):
                # Seeded by the cell's own values, so a cell's videos stay the same when other
                # lengths or depths are added to the grid.
                cell = (length, round(depth * 1_000_000))
                offset = int(sample_rng(seed, "grid-colors", *cell).integers(len(COLORS)))
                for j in range(num_per_cell):
                    rng = sample_rng(seed, "grid", *cell, j)
                    color = COLORS[(offset + j) % len(COLORS)]
                    frames, question, candidates, answer, meta = make_video_frames(
                        "needle", rng, length, size, depth=depth, color=color, needle_frames=needle_frames,
                        shape_size=tuple(shape_size),
                    )
                    rel = f"videos/L{length}-d{di}/{j:04d}.mp4"
                    write_mp4(tmp / rel, frames, fps)
                    meta["event_times"] = [round(k / fps, 6) for k in meta["event_indices"]]
                    samples.append(
                        _mc_item(f"niah-L{length}-d{di}-{j:04d}", rel, question, candidates, answer, "needle", meta)
                    )
                    bar.update()
        bar.close()
        _write_json(tmp / "grid.json", samples)

    log.info("generating needle grid into %s", final)
    _build_atomically(final, params, build)
    return final / "grid.json"


def _synthetic_params(task, num_frames, frame_size, fps, num_train, num_val, seed, needle_frames, shape_size) -> dict[str, Any]:
    if task not in TASKS:
        raise ValueError(f"synthetic task={task!r}, expected one of {TASKS}")
    _check_size(int(frame_size))
    if not float(fps) > 0:
        raise ValueError(f"synthetic fps={fps}, expected > 0")
    if int(num_frames) < 1 or int(num_train) < 0 or int(num_val) < 0:
        raise ValueError(
            f"synthetic num_frames={num_frames}, num_train={num_train}, num_val={num_val}: need >= 1, >= 0, >= 0"
        )
    return {
        "task": task,
        "num_frames": int(num_frames),
        "frame_size": int(frame_size),
        "fps": float(fps),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "needle_frames": int(needle_frames),
        "shape_size": [float(f) for f in shape_size],
        "version": GENERATOR_VERSION,
    }


def _params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _mc_item(id_, video, question, candidates, answer, task, meta) -> dict[str, Any]:
    return dict(id=id_, video=video, question=question, candidates=candidates, answer=answer, task=task, meta=meta)


def _write_json(path: Path, items: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(items, indent=1) + "\n")


def _build_atomically(final: Path, params: dict[str, Any], build) -> None:
    """Run ``build(tmp)`` in a fresh temp dir beside ``final`` and rename it into place.

    A rename within one directory is atomic, so ``final`` either does not exist or is complete:
    an interrupted run leaves only a ``.tmp-…`` directory, which is never read (and is left for
    the user to delete, since another process may still be writing it).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # the rename failed for another reason than a finished twin
                raise
            shutil.rmtree(tmp)  # another process finished the same dataset first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
