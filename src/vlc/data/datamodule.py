"""Samples → decoded clips → padded batches, and the LightningDataModule that wires it up."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vlc.data.annotations import Sample, read_llava_json, read_mc_json
from vlc.data.synthetic import ensure_synthetic
from vlc.data.video import VideoReadError, read_video

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "mc_json", "llava_json")


class VideoQADataset(Dataset):
    """Decodes one sample's clip per item.

    Items are dicts ``{"id", "frames" (T, 3, H, W) uint8, "times" (T,) float32 seconds,
    "question", "answer", "candidates", "task", "meta"}``.

    ``on_error="raise"`` lets the ``VideoReadError`` (which names the file) through.
    ``on_error="skip"`` serves the next readable sample instead, logs a warning naming the file
    and the cause, and raises once more than ``max_skip_fraction`` of the dataset has failed:
    a few broken files in a large crawl are normal, a broken dataset is not. With several
    dataloader workers each worker keeps its own count.

    ``frame_transform`` is applied to the (T, 3, H, W) uint8 frames and should keep that layout
    (normalisation happens in the model, which knows its encoder's mean and std).
    """

    def __init__(
        self,
        samples: list[Sample],
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        backend: str = "decord",
        frame_size: int | tuple[int, int] | None = None,
        on_error: str = "raise",
        max_skip_fraction: float = 0.05,
        frame_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if (num_frames is None) == (fps is None):
            raise ValueError(
                f"VideoQADataset: give exactly one of num_frames or fps; got num_frames={num_frames}, fps={fps}"
            )
        if on_error not in ("raise", "skip"):
            raise ValueError(f"VideoQADataset: on_error={on_error!r}, expected 'raise' or 'skip'")
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"VideoQADataset: max_skip_fraction={max_skip_fraction}, expected a fraction in [0, 1]")
        self.samples = list(samples)
        self.num_frames, self.fps, self.max_frames = num_frames, fps, max_frames
        self.backend = backend
        self.size = _size_pair(frame_size)
        self.on_error = on_error
        self.max_skip_fraction = max_skip_fraction
        self.frame_transform = frame_transform
        self.num_skips = 0  # times a failing sample was replaced by another
        self.failed: dict[int, str] = {}  # index → cause; a known-bad file is not decoded again

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_error == "raise":
            return self._load(index)
        for offset in range(len(self.samples)):
            k = (index + offset) % len(self.samples)
            if k in self.failed:
                self.num_skips += 1
                continue
            try:
                return self._load(k)
            except VideoReadError as error:
                self._record_failure(k, error)
        raise RuntimeError(f"VideoQADataset: no readable video among all {len(self.samples)} samples")

    def check_files(self) -> list[str]:
        """Paths of videos that do not exist, so missing files are reported before training."""
        missing = [k for k, s in enumerate(self.samples) if not os.path.isfile(s.video)]
        if missing and self.on_error == "raise":
            first = self.samples[missing[0]].video
            raise VideoReadError(first, f"missing file ({len(missing)} of {len(self.samples)} videos missing)")
        for k in missing:  # skip policy: known up front, so never decoded, and the limit applies now
            error = VideoReadError(self.samples[k].video, "missing file (no such path)")
            self._record_failure(k, error, count_skip=False)
        return [self.samples[k].video for k in missing]

    def _record_failure(self, index: int, error: VideoReadError, count_skip: bool = True) -> None:
        self.failed[index] = error.cause
        self.num_skips += int(count_skip)
        log.warning("skipping sample %s: %s", self.samples[index].id, error)
        limit = self.max_skip_fraction * len(self.samples)
        if len(self.failed) > limit:
            listed = "; ".join(f"{self.samples[k].video}: {cause}" for k, cause in list(self.failed.items())[:5])
            raise RuntimeError(
                f"{len(self.failed)} of {len(self.samples)} videos failed to read, more than "
                f"max_skip_fraction={self.max_skip_fraction} allows ({limit:.1f}); first failures: {listed}"
            )

    def _load(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        clip = read_video(
            sample.video,
            num_frames=self.num_frames,
            fps=self.fps,
            max_frames=self.max_frames,
            start=sample.start,
            end=sample.end,
            backend=self.backend,
            size=self.size,
        )
        frames = clip.frames.permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W) uint8
        if self.frame_transform is not None:
            frames = self.frame_transform(frames)
        return {
            "id": sample.id,
            "frames": frames,
            "times": clip.times,  # (T,)
            "question": sample.question,
            "answer": sample.answer,
            "candidates": sample.candidates,
            "task": sample.task,
            "meta": sample.meta,
        }


def collate_video_qa(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack clips of different lengths: zero-pad to the longest and mark real frames in a mask.

    pixels (B, T, 3, H, W) uint8, frame_mask (B, T) bool, times (B, T) float32 (0 on padding),
    and per-sample lists ids, questions, answers, candidates, tasks, meta.
    """
    if not items:
        raise ValueError("collate_video_qa: empty batch")
    shapes = {tuple(item["frames"].shape[1:]) for item in items}
    if len(shapes) > 1:
        raise ValueError(
            f"collate_video_qa: frames of different sizes {sorted(shapes)} (as (3, H, W)) in one batch; "
            f"set frame_size so every clip is resized to the same (H, W)"
        )
    B, T = len(items), max(item["frames"].shape[0] for item in items)
    C, H, W = shapes.pop()
    pixels = torch.zeros(B, T, C, H, W, dtype=items[0]["frames"].dtype)
    frame_mask = torch.zeros(B, T, dtype=torch.bool)
    times = torch.zeros(B, T, dtype=torch.float32)
    for b, item in enumerate(items):
        n = item["frames"].shape[0]
        pixels[b, :n] = item["frames"]
        frame_mask[b, :n] = True
        times[b, :n] = item["times"]
    return {
        "pixels": pixels,
        "frame_mask": frame_mask,
        "times": times,
        "ids": [item["id"] for item in items],
        "questions": [item["question"] for item in items],
        "answers": [item["answer"] for item in items],
        "candidates": [item["candidates"] for item in items],
        "tasks": [item["task"] for item in items],
        "meta": [item["meta"] for item in items],
    }


class VideoDataModule(L.LightningDataModule):
    """Video QA data from the built-in synthetic benchmark or from annotation files.

    source "synthetic": ``root`` is the cache directory, ``synthetic`` the generator parameters
    (see ``ensure_synthetic``); the test split is the val split. source "mc_json" / "llava_json":
    ``train_file`` / ``val_file`` / ``test_file`` (relative to ``root`` unless absolute; None =
    no such split), videos relative to ``video_root`` (default: each annotation file's folder).
    """

    def __init__(
        self,
        source: str = "synthetic",
        root: str = "data",
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        video_root: str | None = None,
        synthetic: dict[str, Any] | None = None,
        num_frames: int | None = 32,
        fps: float | None = None,
        max_frames: int | None = None,
        backend: str = "decord",
        frame_size: int | tuple[int, int] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        on_error: str = "raise",
        max_skip_fraction: float = 0.05,
        seed: int = 0,
        frame_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r}, expected one of {SOURCES}")
        if (num_frames is None) == (fps is None):
            raise ValueError(f"data: set exactly one of num_frames or fps; got num_frames={num_frames}, fps={fps}")
        if source != "synthetic" and not (train_file or val_file or test_file):
            raise ValueError(f"data.source={source!r} needs at least one of train_file, val_file, test_file")
        self.source, self.root = source, root
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.video_root = video_root
        self.synthetic = dict(synthetic or {})
        self.dataset_args = dict(
            num_frames=num_frames,
            fps=fps,
            max_frames=max_frames,
            backend=backend,
            frame_size=frame_size,
            on_error=on_error,
            max_skip_fraction=max_skip_fraction,
            frame_transform=frame_transform,
        )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.datasets: dict[str, VideoQADataset] = {}

    @property
    def has_test(self) -> bool:
        """Whether a test split distinct from val exists (synthetic data has train and val only)."""
        return self.source != "synthetic" and bool(self.files["test"])

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node, so generation never races with itself.
        if self.source == "synthetic":
            ensure_synthetic(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, samples in self._read_splits().items():
            dataset = VideoQADataset(samples, **self.dataset_args)
            missing = dataset.check_files()
            if missing:
                log.warning("%s split: %d of %d videos missing, e.g. %s", split, len(missing), len(dataset), missing[0])
            self.datasets[split] = dataset

    def _read_splits(self) -> dict[str, list[Sample]]:
        if self.source == "synthetic":
            folder = ensure_synthetic(self.root, **self.synthetic)  # returns the cached dir at once
            val = read_mc_json(folder / "val.json")
            return {"train": read_mc_json(folder / "train.json"), "val": val, "test": val}
        reader = read_mc_json if self.source == "mc_json" else read_llava_json
        splits = {}
        for split, name in self.files.items():
            if name:
                path = Path(name) if os.path.isabs(name) else Path(self.root) / name
                splits[split] = reader(path, self.video_root)
        return splits

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader("train", shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
        if split not in self.datasets:
            given = {k: v for k, v in self.files.items() if v} if self.source != "synthetic" else "synthetic"
            raise RuntimeError(f"no {split} data: call setup() first, or set data.{split}_file (have: {given})")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=collate_video_qa,
            persistent_workers=self.num_workers > 0,
        )


def _size_pair(frame_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    if frame_size is None:
        return None
    if isinstance(frame_size, int):
        return (frame_size, frame_size)
    size = tuple(int(s) for s in frame_size)
    if len(size) != 2:
        raise ValueError(f"frame_size={frame_size!r}, expected an int or (height, width)")
    return size
