"""Needle in a haystack over a length × depth grid (Video-XL's V-NIAH on the synthetic generator).

One needle frame sits at index ``int(N · depth)`` (clamped to N-1) of an N-frame grey haystack; the
question asks its colour among 4 options. Every cell decodes all N frames of its videos, so the
model sees exactly the haystack it is scored on. Results: ``niah.csv`` (one row per cell: accuracy,
n and the mean cost of the cell's samples) and ``niah_heatmap.png`` (depth down, length across).
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from vlc.data.annotations import read_mc_json
from vlc.data.datamodule import VideoQADataset, collate_video_qa
from vlc.data.synthetic import ensure_needle_grid
from vlc.evaluation.records import COST_KEYS

log = logging.getLogger(__name__)

CSV_COLUMNS = ("length", "depth", "accuracy", "n", *COST_KEYS)


def needle_index(length: int, depth: float) -> int:
    """Where the needle of an N-frame haystack at ``depth`` ∈ [0, 1] sits: int(N·depth), at most N-1."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"niah depth={depth}, expected a fraction in [0, 1]")
    return min(int(length * depth), length - 1)


def niah_loaders(
    root: str | Path,
    lengths: list[int],
    depths: list[float],
    per_cell: int = 8,
    frame_size: int = 32,
    fps: float = 4.0,
    seed: int = 0,
    batch_size: int = 1,
    backend: str = "decord",
    lazy: bool = False,
) -> list[DataLoader]:
    """One loader per haystack length over the grid's videos (``ensure_needle_grid`` under
    ``root``: generated once, cached), each with ``num_frames = N`` so every frame of the video is
    decoded (``lazy``: when the model encodes it, see ``data.lazy_decode``). Evaluate them as any
    validation loaders (``trainer.validate(model, dataloaders=...)``), then ``annotate``."""
    grid = ensure_needle_grid(root, lengths, depths, num_per_cell=per_cell, size=frame_size, fps=fps, seed=seed)
    samples = read_mc_json(grid)
    by_length: dict[int, list] = defaultdict(list)
    for s in samples:
        by_length[int(s.meta["length"])].append(s)
    return [
        DataLoader(VideoQADataset(by_length[n], num_frames=n, backend=backend, frame_size=frame_size, lazy=lazy),
                   batch_size=batch_size, shuffle=False, collate_fn=collate_video_qa)
        for n in sorted(by_length)
    ]


def annotate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with its cell (``length``, ``depth``) and ``needle_index``, from its meta."""
    for r in records:
        r["length"], r["depth"] = int(r["meta"]["length"]), float(r["meta"]["depth"])
        r["needle_index"] = int(r["meta"]["needle_index"])
    for length in sorted({r["length"] for r in records}):
        cell = [r["correct"] for r in records if r["length"] == length]
        log.info("niah length %d: accuracy %.3f over %d samples", length, float(np.mean(cell)), len(cell))
    return records


def cell_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (length, depth): accuracy, n and the mean of every cost field."""
    cells: dict[tuple[int, float], list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["length"], r["depth"])].append(r)
    rows = []
    for (length, depth), rs in sorted(cells.items()):
        row = dict(length=length, depth=depth, accuracy=float(np.mean([r["correct"] for r in rs])), n=len(rs))
        row.update({k: float(np.mean([r[k] for r in rs])) for k in COST_KEYS})
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k in CSV_COLUMNS})
    return path


def plot_heatmap(rows: list[dict[str, Any]], path: str | Path, title: str = "needle in a haystack") -> Path:
    """Accuracy per cell: depth on y (0 at the top), haystack length on x, each cell annotated."""
    from matplotlib.figure import Figure  # no pyplot: no display backend needed

    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    acc = np.full((len(depths), len(lengths)), np.nan)
    for r in rows:
        acc[depths.index(r["depth"]), lengths.index(r["length"])] = r["accuracy"]
    fig = Figure(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.6 * len(depths)))
    ax = fig.add_subplot()
    image = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(acc[i, j]):
                ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("haystack length (frames)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)
