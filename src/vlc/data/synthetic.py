"""The built-in synthetic benchmark: real H.264 videos plus multiple-choice JSON.

Three task families after VNBench, a temporal grounding one and a rank one, each a question whose
answer lives in a few frames of a long, uninformative "haystack":

- **needle**: one frame (or a short clip, ``needle_frames``) shows a large, clearly coloured shape;
  "What color is the shape that appears briefly in the video?"
- **order**: two differently coloured shapes appear at two different times;
  "Which color appeared first?"
- **order** with ``num_events`` n >= 3: n colours, "In what order do the colors appear?", answered
  by the colours in order (``"red, blue, green"``) among 4 orderings of the same colours, so only
  the order tells them apart.
- **count**: a red shape flashes k ∈ ``count_range`` (default {1, 2, 3, 4}) times in non-adjacent
  frames; "How many times does the red shape appear?", every count of the range an option.
- **rank**: ``num_needles`` shapes of different colours appear one after another; "What color is the
  second shape to appear?" (the rank drawn per sample). With 3 needles the options hold all three
  colours, so knowing *which* colours appeared is not enough.
- **ground**: a red circle is shown during one contiguous span of 2 … num_frames//4 frames;
  "When does the red circle appear?", answered by the span in seconds, ``"2.5-4.0"`` (start = the
  first red frame's timestamp, end = the timestamp just after the last). The other 3 candidates
  are spans of the same length at other positions, so it is scored as multiple choice like the
  others, and ``meta["span"]`` holds the true span as numbers for ``vlc.evaluation.grounding``.

The haystack is grey on purpose: textured noise and slowly drifting grey blobs, no colour
anywhere, so no frame but the event frames says anything about the answer, and a model (or a
compressor) must keep the one informative frame out of many. Frames change a little from one to
the next, so pixel-difference pruning has something real to do.

Options that make it harder, all off by default (the defaults generate today's files exactly):
``needle_patch`` draws every event shape inside one patch-aligned cell of that side (8 px of a
32 px frame is one token of the tiny ViT), so spatial pooling and merging have detail to lose;
``textures`` picks the haystack's texture family per sample (``TEXTURES``) and ``shapes`` the event
shapes (``ALL_SHAPES``), which is how ``vlc.data.suite`` keeps a held-out split whose textures and
shapes training never saw.

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
SHAPES = ("square", "circle")  # the default event shapes
ALL_SHAPES = (*SHAPES, "diamond", "cross", "triangle")
# Haystack texture families (all grey): "blocks" is the default; the others exist so a held-out
# split can show textures never seen in training.
TEXTURES = ("blocks", "stripes", "checker", "rings")
TASKS = ("needle", "order", "count", "ground", "rank")
# Event shapes span this fraction of the frame side (lo, hi). The default fills the frame: a brief
# full-frame flash of colour, so each event frame is unmistakable on its own and the difficulty is
# purely *finding* it among the haystack frames. Smaller shapes (e.g. [0.33, 0.5]) also test how
# much spatial detail a compressor keeps, and take a tiny model from scratch far longer to learn.
SHAPE_SIZE = (1.0, 1.0)
# Every task draws its haystack and shapes the same way: (needle_patch, textures, shapes).
_LOOKS = {"shape_size", "needle_patch", "textures", "shapes"}
TASK_PARAMS = {
    "needle": {"needle_frames", "depth", "color", *_LOOKS},
    "order": {"needle_frames", "num_events", *_LOOKS},
    # needle_frames is accepted (ensure_synthetic passes it to every task) but unused by count
    # (single-frame flashes) and ground (the span's length is drawn per sample, or span_frames).
    "count": {"needle_frames", "count", "count_range", *_LOOKS},
    "ground": {"needle_frames", "span_frames", "start", *_LOOKS},
    "rank": {"needle_frames", "num_needles", "rank", *_LOOKS},
}

QUESTIONS = {
    "needle": "What color is the shape that appears briefly in the video?",
    "order": "Which color appeared first?",
    "count": "How many times does the red shape appear?",
    "ground": "When does the red circle appear?",
}
# With explicit ``shapes`` the ground task's shape is drawn from them, so its question names none.
GROUND_QUESTION_ANY_SHAPE = "When does the red shape appear?"
ORDER_QUESTION_MANY = "In what order do the colors appear?"
RANK_QUESTION = "What color is the {ordinal} shape to appear?"
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
COUNT_RANGE = (1, 4)
COUNT_CHOICES = ["1", "2", "3", "4"]
NUM_NEEDLES = 3  # rank task
GROUND_MIN_SPAN = 2  # frames: a single red frame would make grounding the needle task again

# Low CRF: at 32×32 the chroma planes are 16×16, and the default CRF 23 washes colours out.
CRF = 10


# --------------------------------------------------------------------------------------------
# Frames


def make_haystack(num_frames: int, size: int, rng: np.random.Generator, texture: str = "blocks") -> np.ndarray:
    """(T, S, S, 3) uint8 grey frames: a fixed ``texture``, drifting blobs and a little fresh noise."""
    _check_size(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (S, S)
    pattern = make_texture(texture, size, rng)  # (S, S), about unit spread; drawn before the brightness
    base = rng.uniform(90, 150) + 18.0 * pattern  # (S, S)
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


def make_texture(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S) float32 grey pattern of about unit spread, of one of the ``TEXTURES`` families."""
    if texture == "blocks":
        # Smooth texture: coarse noise upsampled, so it looks like a surface rather than static.
        coarse = rng.normal(0.0, 1.0, (size // 4 + 2, size // 4 + 2)).astype(np.float32)
        return np.kron(coarse, np.ones((4, 4), np.float32))[:size, :size]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (S, S)
    if texture == "stripes":  # a sine grating at a random angle, period and phase
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(4, 12), rng.uniform(0, 2 * np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        return (np.sqrt(2) * np.sin(2 * np.pi * along / period + phase)).astype(np.float32)
    if texture == "checker":  # hard-edged squares of 2 … 6 px, shifted at random
        cell = int(rng.integers(2, 7))
        oy, ox = (int(o) for o in rng.integers(0, cell, 2))
        parity = ((yy.astype(int) + oy) // cell + (xx.astype(int) + ox) // cell) % 2
        return (2.0 * parity - 1.0).astype(np.float32)
    if texture == "rings":  # concentric sine rings around a random centre
        cy, cx = rng.uniform(0, size, 2)
        period, phase = rng.uniform(4, 12), rng.uniform(0, 2 * np.pi)
        radius = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        return (np.sqrt(2) * np.sin(2 * np.pi * radius / period + phase)).astype(np.float32)
    raise ValueError(f"unknown haystack texture {texture!r}; expected one of {TEXTURES}")


def draw_shape(
    frame: np.ndarray,
    color: str,
    rng: np.random.Generator,
    shape: str | None = None,
    shape_size: tuple[float, float] = SHAPE_SIZE,
    needle_patch: int | None = None,
    shapes: tuple[str, ...] = SHAPES,
) -> dict[str, Any]:
    """Draw a filled shape in place and return where: ``{"shape", "box"}`` (+ ``"patch"``).

    The shape (drawn from ``shapes`` unless given) fills a square box whose side is a
    ``shape_size`` fraction of the frame at a random position, or, with ``needle_patch`` p, exactly
    one cell of the frame's p-pixel grid (``"patch": [row, col]``): with p the encoder's patch
    size, the event is one visual token.
    """
    if color not in PALETTE:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    size = frame.shape[0]
    shape = shape or str(rng.choice(shapes))
    if shape not in ALL_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {ALL_SHAPES}")
    if needle_patch is not None:
        p = int(needle_patch)
        if not 1 <= p <= size or size % p:
            raise ValueError(f"needle_patch={needle_patch}, expected a divisor of the frame side {size} (pixels)")
        row, col = (int(i) for i in rng.integers(0, size // p, 2))
        box = [row * p, col * p, (row + 1) * p, (col + 1) * p]
        paint_shape(frame, color, shape, box)
        return {"shape": shape, "box": box, "patch": [row, col]}
    lo, hi = (float(f) for f in shape_size)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"shape_size={list(shape_size)}, expected fractions 0 < lo <= hi <= 1 of the frame side")
    side = int(rng.integers(max(1, round(size * lo)), max(1, round(size * hi)) + 1))
    y0 = int(rng.integers(0, size - side + 1))
    x0 = int(rng.integers(0, size - side + 1))
    box = [y0, x0, y0 + side, x0 + side]  # y0, x0, y1, x1
    paint_shape(frame, color, shape, box)
    return {"shape": shape, "box": box}


def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """(h, w) bool: the pixels of ``shape`` inscribed in an h × w box (pixel centres inside)."""
    yy, xx = np.mgrid[0:height, 0:width]
    ry, rx = height / 2, width / 2
    u, v = (yy + 0.5 - ry) / ry, (xx + 0.5 - rx) / rx  # (h, w) in (-1, 1)
    if shape == "square":
        return np.ones((height, width), bool)
    if shape == "circle":
        return u**2 + v**2 <= 1.0
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":  # a plus sign, arms a third of the side wide
        return (np.abs(u) <= 1 / 3) | (np.abs(v) <= 1 / 3)
    if shape == "triangle":  # apex at the top centre, base along the bottom
        return np.abs(v) <= (u + 1.0) / 2
    raise ValueError(f"unknown shape {shape!r}; expected one of {ALL_SHAPES}")


def paint_shape(frame: np.ndarray, color: str, shape: str, box: list[int]) -> None:
    """Fill ``shape`` inscribed in ``box`` (y0, x0, y1, x1) of a (H, W, 3) frame, in place."""
    y0, x0, y1, x1 = box
    if shape == "square":
        frame[y0:y1, x0:x1] = PALETTE[color]
        return
    frame[y0:y1, x0:x1][shape_mask(shape, y1 - y0, x1 - x0)] = PALETTE[color]


def make_needle_frames(
    num_frames: int,
    depth: float,
    color: str,
    size: int,
    rng: np.random.Generator,
    needle_frames: int = 1,
    shape: str | None = None,
    shape_size: tuple[float, float] = SHAPE_SIZE,
    needle_patch: int | None = None,
    shapes: tuple[str, ...] = SHAPES,
    texture: str = "blocks",
) -> tuple[np.ndarray, dict[str, Any]]:
    """A haystack with one coloured shape shown for ``needle_frames`` frames from int(N·depth).

    Returns ``(frames (T, S, S, 3) uint8, meta)``; the clip is moved earlier if it would run past
    the end, so a depth near 1 still shows every needle frame. ``needle_patch``, ``shapes``: see
    ``draw_shape``; ``texture``: see ``make_haystack``.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"needle depth={depth}, expected a fraction in [0, 1]")
    if not 1 <= needle_frames <= num_frames:
        raise ValueError(f"needle_frames={needle_frames}, expected 1 … num_frames={num_frames}")
    frames = make_haystack(num_frames, size, rng, texture)
    index = min(int(num_frames * depth), num_frames - needle_frames)
    where = draw_shape(frames[index], color, rng, shape, shape_size, needle_patch, shapes)
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
    needle_patch: int | None = None,
    shape: str = "circle",
    texture: str = "blocks",
) -> tuple[np.ndarray, list[str], str, dict[str, Any]]:
    """A haystack with a red ``shape`` (a circle by default) held still on frames
    ``start … start + span_frames - 1``.

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

    frames = make_haystack(num_frames, size, rng, texture)
    where = draw_shape(frames[start], "red", rng, shape, shape_size, needle_patch)
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

    task_params: ``needle_frames`` (needle, order, rank: frames each event lasts), and
    needle: ``depth`` (default uniform in [0, 1)), ``color`` (default uniform over the palette);
    order: ``num_events`` (default 2); count: ``count`` (default uniform over ``count_range``,
    default (1, 4)); ground: ``span_frames``, ``start`` (see ``make_ground_frames``); rank:
    ``num_needles`` (default 3), ``rank`` (1-based, default uniform). Every task: ``shape_size``,
    ``needle_patch`` and ``shapes`` (see ``draw_shape``; the default draws from ``SHAPES``) and
    ``textures`` (the haystack's texture is drawn from them; default "blocks", no draw). ``fps``
    is the rate the video will be written at: only ground uses it, for the seconds in its answer.
    ``meta["event_indices"]`` lists the frames holding the answer, for every task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {TASKS}")
    allowed = TASK_PARAMS[task]
    unknown = set(task_params) - allowed
    if unknown:
        raise TypeError(f"synthetic task {task!r} got unknown parameters {sorted(unknown)}; allowed: {sorted(allowed)}")
    needle_frames = int(task_params.get("needle_frames", 1))
    looks = dict(shape_size=tuple(task_params.get("shape_size") or SHAPE_SIZE))
    looks["needle_patch"] = task_params.get("needle_patch")
    looks["shapes"] = _names("shapes", task_params.get("shapes"), ALL_SHAPES) or SHAPES
    # Drawn first, and only when asked for, so the default's stream of draws is the original one.
    textures = _names("textures", task_params.get("textures"), TEXTURES)
    texture = str(rng.choice(textures)) if textures else "blocks"
    extra = {"texture": texture} if textures else {}  # the default JSON stays as it was

    if task == "needle":
        depth = task_params.get("depth")
        depth = float(rng.uniform(0.0, 1.0)) if depth is None else float(depth)
        color = task_params.get("color") or str(rng.choice(COLORS))
        frames, meta = make_needle_frames(num_frames, depth, color, size, rng, needle_frames, texture=texture, **looks)
        candidates = _candidates([color], rng)
        return frames, QUESTIONS["needle"], candidates, color, {**meta, **extra}

    if task in ("order", "rank"):
        key, default, low = ("num_events", 2, 2) if task == "order" else ("num_needles", NUM_NEEDLES, 1)
        n = int(task_params.get(key) or default)
        if not low <= n <= len(ORDINALS):
            raise ValueError(f"{task} task: {key}={n}, expected {low} … {len(ORDINALS)}")
        need = n * needle_frames + n - 1
        if num_frames < need:
            raise ValueError(
                f"{task} task needs num_frames >= {key}*needle_frames+{key}-1 = {need} "
                f"({n} clips of {needle_frames} with a haystack frame between), got {num_frames}"
            )
        rank = task_params.get("rank")
        if task == "rank" and rank is not None and not 1 <= int(rank) <= n:
            raise ValueError(f"rank task: rank={rank}, expected 1 … num_needles={n}")
        colors = [str(c) for c in rng.choice(COLORS, size=n, replace=False)]  # in the order they appear
        # n clips of needle_frames with at least one haystack frame between them. Sorted distinct
        # s_0 < … < s_{n-1} in [0, T - nL] map one-to-one onto such layouts (start_j = s_j + jL),
        # so every layout is equally likely.
        slots = sorted(int(i) for i in rng.choice(num_frames - n * needle_frames + 1, size=n, replace=False))
        starts = [s + j * needle_frames for j, s in enumerate(slots)]
        frames = make_haystack(num_frames, size, rng, texture)
        wheres = []
        for start, color in zip(starts, colors):
            where = draw_shape(frames[start], color, rng, None, **looks)
            for t in range(start + 1, start + needle_frames):
                paint_shape(frames[t], color, where["shape"], where["box"])
            wheres.append(where)
        meta = {
            "length": num_frames,
            "colors": colors,
            "starts": starts,
            "needle_frames": needle_frames,
            "shapes": [w["shape"] for w in wheres],
            "boxes": [w["box"] for w in wheres],
            **({"patches": [w["patch"] for w in wheres]} if looks["needle_patch"] is not None else {}),
            "event_indices": [s + k for s in starts for k in range(needle_frames)],
            **extra,
        }
        if task == "order" and n == 2:  # the original question: which came first
            return frames, QUESTIONS["order"], _candidates(colors, rng), colors[0], meta
        if task == "order":
            return frames, ORDER_QUESTION_MANY, *_order_candidates(colors, rng), meta
        rank = int(rng.integers(1, n + 1)) if rank is None else int(rank)
        answer = colors[rank - 1]
        # The options are the needles' own colours where they fit (up to 4), so knowing which
        # colours appeared does not answer the question; only their order does.
        others = [c for c in colors if c != answer]
        shown = others if n <= 4 else [str(c) for c in rng.choice(others, size=3, replace=False)]
        meta.update(rank=rank, target_indices=list(range(starts[rank - 1], starts[rank - 1] + needle_frames)))
        question = RANK_QUESTION.format(ordinal=ORDINALS[rank - 1])
        return frames, question, _candidates([answer, *shown], rng), answer, meta

    if task == "ground":
        explicit = task_params.get("shapes") is not None
        shape = str(rng.choice(looks["shapes"])) if explicit else "circle"
        frames, candidates, answer, meta = make_ground_frames(
            num_frames, size, rng, fps, task_params.get("span_frames"), task_params.get("start"),
            looks["shape_size"], looks["needle_patch"], shape, texture,
        )
        question = GROUND_QUESTION_ANY_SHAPE if explicit else QUESTIONS["ground"]
        return frames, question, candidates, answer, {**meta, **extra}

    # count: single-frame flashes, never adjacent, so two flashes never read as one long one.
    lo, hi = (int(c) for c in (task_params.get("count_range") or COUNT_RANGE))
    if not 1 <= lo <= hi or hi - lo + 1 > 26:
        raise ValueError(f"count task: count_range=[{lo}, {hi}], expected 1 <= lo <= hi, at most 26 counts (options)")
    count = task_params.get("count")
    count = int(rng.integers(lo, hi + 1)) if count is None else int(count)
    if not lo <= count <= hi:
        raise ValueError(f"count={count}, expected {lo} … {hi}")
    if num_frames < 2 * count - 1:
        raise ValueError(f"count task needs num_frames >= 2*count-1 = {2 * count - 1}, got {num_frames}")
    # k sorted distinct slots among T-k+1, then slot j moves right by j: gaps of at least 2.
    slots = np.sort(rng.choice(num_frames - count + 1, size=count, replace=False))
    indices = [int(s) + j for j, s in enumerate(slots)]
    frames = make_haystack(num_frames, size, rng, texture)
    shape = str(rng.choice(looks["shapes"]))
    wheres = [draw_shape(frames[i], "red", rng, shape, **looks) for i in indices]
    meta = {
        "length": num_frames,
        "count": count,
        "color": "red",
        "shape": shape,
        "boxes": [w["box"] for w in wheres],
        **({"patches": [w["patch"] for w in wheres]} if looks["needle_patch"] is not None else {}),
        "event_indices": indices,
        **extra,
    }
    return frames, QUESTIONS["count"], [str(k) for k in range(lo, hi + 1)], str(count), meta


def _candidates(required: list[str], rng: np.random.Generator, total: int = 4) -> list[str]:
    """``required`` colours plus others up to ``total``, shuffled so the answer's slot is random."""
    others = [c for c in COLORS if c not in required]
    picked = list(required) + [str(c) for c in rng.choice(others, size=total - len(required), replace=False)]
    return [picked[i] for i in rng.permutation(total)]


def _order_candidates(colors: list[str], rng: np.random.Generator, total: int = 4) -> tuple[list[str], str]:
    """The true order of ``colors`` and ``total - 1`` other orders of the same colours, shuffled:
    ``(candidates, answer)``, each written ``"red, blue, green"``."""
    answer = ", ".join(colors)
    picked = [answer]
    while len(picked) < total:  # n >= 3 has n! >= 6 orders, so this ends
        text = ", ".join(colors[i] for i in rng.permutation(len(colors)))
        if text not in picked:
            picked.append(text)
    return [picked[i] for i in rng.permutation(total)], answer


def _names(key: str, value: Any, known: tuple[str, ...]) -> tuple[str, ...] | None:
    """A non-empty tuple of known names from a config list, or None when not given."""
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise ValueError(f"synthetic {key}={list(names)}: expected a non-empty list of {known}")
    return names


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
    needle_patch: int | None = None,
    textures: list[str] | None = None,
    shapes: list[str] | None = None,
    num_events: int | None = None,
    num_needles: int | None = None,
    count_range: list[int] | None = None,
) -> Path:
    """Where ``ensure_synthetic`` keeps the dataset with these parameters (whether made yet or not)."""
    options = dict(needle_patch=needle_patch, textures=textures, shapes=shapes, num_events=num_events,
                   num_needles=num_needles, count_range=count_range)
    params = _synthetic_params(task, num_frames, frame_size, fps, num_train, num_val, seed, needle_frames, shape_size,
                               **options)
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
    needle_patch: int | None = None,
    textures: list[str] | None = None,
    shapes: list[str] | None = None,
    num_events: int | None = None,
    num_needles: int | None = None,
    count_range: list[int] | None = None,
) -> Path:
    """Generate the dataset into ``root/<task>-<hash of params>/`` unless it is already there.

    The directory holds ``train.json`` and ``val.json`` (``read_mc_json`` format, video paths
    relative to the JSON), ``params.json`` and ``videos/<split>/<index>.mp4``.

    The options from ``needle_patch`` on are ``make_video_frames``'s task parameters; None (the
    default) leaves each out, so the default dataset is the one this generator has always made.
    Each one given must apply to ``task`` (e.g. ``num_events`` to order).
    """
    options = dict(needle_patch=needle_patch, textures=textures, shapes=shapes, num_events=num_events,
                   num_needles=num_needles, count_range=count_range)
    params = _synthetic_params(task, num_frames, frame_size, fps, num_train, num_val, seed, needle_frames, shape_size,
                               **options)
    given = {k: params[k] for k in options if k in params}
    final = Path(root) / f"{task}-{_params_hash(params)}"
    if final.is_dir():
        return final

    def build(tmp: Path) -> None:
        for split, count in (("train", num_train), ("val", num_val)):
            samples = []
            for i in tqdm(range(count), desc=f"synthetic {task} {split}", unit="video"):
                rng = sample_rng(seed, split, i)
                frames, question, candidates, answer, meta = make_video_frames(
                    task, rng, num_frames, frame_size, fps, needle_frames=needle_frames, shape_size=tuple(shape_size),
                    **given,
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
    needle_patch: int | None = None,
    textures: list[str] | None = None,
    shapes: list[str] | None = None,
) -> Path:
    """A needle-in-a-haystack grid: ``num_per_cell`` needle videos per (length, depth) cell.

    Returns the path of the grid's MC JSON (``grid.json``) in ``root/niah-<hash>/``; every sample's
    ``meta`` carries ``length`` (frames in the video) and ``depth`` (where the needle sits), the
    axes of a NIAH heatmap. Colours cycle through the palette within a cell, so every cell asks
    about the same mix of colours. ``needle_patch`` (a one-patch needle), ``textures`` and
    ``shapes``: as ``make_video_frames``; None leaves each out (the original grid).
    """
    looks = _looks(needle_patch, textures, shapes)
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
        **looks,
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
                        shape_size=tuple(shape_size), **looks,
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


def _synthetic_params(
    task, num_frames, frame_size, fps, num_train, num_val, seed, needle_frames, shape_size,
    needle_patch=None, textures=None, shapes=None, num_events=None, num_needles=None, count_range=None,
) -> dict[str, Any]:
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
        **_looks(needle_patch, textures, shapes),
        **_task_options(task, num_events=num_events, num_needles=num_needles, count_range=count_range),
    }


def _looks(needle_patch, textures, shapes) -> dict[str, Any]:
    """The options every task takes, as they enter a dataset's params: only those given, so a
    dataset without them keeps the hash (and the directory) it has always had."""
    looks: dict[str, Any] = {}
    if needle_patch is not None:
        if isinstance(needle_patch, bool) or not isinstance(needle_patch, int) or needle_patch < 1:
            raise ValueError(f"synthetic needle_patch={needle_patch!r}, expected a patch side in pixels >= 1, or null")
        looks["needle_patch"] = int(needle_patch)
    for key, value, known in (("textures", textures, TEXTURES), ("shapes", shapes, ALL_SHAPES)):
        names = _names(key, value, known)
        if names is not None:
            looks[key] = list(names)
    return looks


def _task_options(task: str, **options: Any) -> dict[str, Any]:
    """The task-specific options given (not None); each must belong to ``task``."""
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in TASK_PARAMS[task]:
            owners = [t for t in TASKS if key in TASK_PARAMS[t]]
            raise ValueError(f"synthetic {key}={given[key]!r} applies to task {' / '.join(owners)}, not {task!r}; "
                             f"set it to null")
    if "count_range" in given:
        lo_hi = [int(c) for c in given["count_range"]]
        if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"synthetic count_range={given['count_range']!r}, expected [lo, hi] with 1 <= lo <= hi")
        given["count_range"] = lo_hi
    for key in ("num_events", "num_needles"):
        if key in given:
            given[key] = int(given[key])
    return given


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
