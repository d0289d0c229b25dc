"""Samples → decoded clips → padded batches, and the LightningDataModule that wires it up."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from vlc.data.annotations import MAX_TEXT_CHARS, Sample, read_llava_json, read_mc_json
from vlc.data.frames import CLIP_MEAN_RGB, check_aspect
from vlc.data.sampler import resumable
from vlc.data.suite import ensure_suite
from vlc.data.synthetic import ensure_synthetic
from vlc.data.video import LazyClip, LazyFrames, VideoReadError, file_problem, open_video, read_video

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "suite", "mc_json", "llava_json")
GENERATED = ("synthetic", "suite")  # sources made on first use from ``synthetic``, the generator parameters
LISTED = 20  # failures named in one message; the rest are counted


class VideoFilesError(VideoReadError):
    """The pre-flight check found videos that cannot be read; ``problems`` maps each path to its cause."""

    def __init__(self, message: str, problems: dict[str, str] | None = None) -> None:
        RuntimeError.__init__(self, message)
        self.problems = dict(problems or {})
        first = next(iter(self.problems.items()), ("", message))
        self.path, self.cause = first


class SkipLimitError(RuntimeError):
    """More videos failed to read than ``max_skip_fraction`` allows under ``on_error="skip"``."""


def _listing(problems: dict[str, str]) -> str:
    named = "; ".join(f"{path}: {cause}" for path, cause in list(problems.items())[:LISTED])
    more = len(problems) - LISTED
    return named + (f"; … and {more} more" if more > 0 else "")


class VideoQADataset(Dataset):
    """Decodes one sample's clip per item.

    Items are dicts ``{"id", "frames" (T, 3, H, W) uint8, "times" (T,) float32 seconds,
    "question", "answer", "candidates", "task", "meta", "skipped"}``.

    ``on_error="raise"`` lets the ``VideoReadError`` (which names the file) through.
    ``on_error="skip"`` with ``substitute`` (training) serves the next readable sample instead;
    without it (evaluation) the item is returned as skipped — ``frames`` None, left out of the
    batch by ``collate_video_qa`` — so it is never scored, and never twice. Either way it logs a warning naming the file
    and the cause (once per file), and raises ``SkipLimitError`` once more than
    ``max_skip_fraction`` of the dataset has failed: a few broken files in a large crawl are
    normal, a broken dataset is not. Every item carries ``"skipped"``: ``(split, id, video, cause)``
    of each sample it stands in for, so the main process learns of failures in dataloader workers
    (``VideoDataModule.skipped``); each worker also keeps its own count.

    ``frame_transform`` is applied to the (T, 3, H, W) uint8 frames and should keep that layout
    (normalisation happens in the model, which knows its encoder's mean and std).

    ``aspect`` / ``pad_color``: how a frame whose shape differs from ``frame_size`` is fitted to it
    (``vlc.data.frames``: pad on the mean colour, centre-crop, or squash).

    ``lazy=True`` samples the frames but decodes nothing: ``"frames"`` is a ``LazyClip`` that
    decodes a range at a time (``frame_transform`` then applies to each decoded range), and
    ``collate_video_qa`` batches such clips into a ``LazyFrames``. Streaming ``vst`` then holds
    one window of pixels at a time instead of the whole clip (``data.lazy_decode``).
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
        split: str = "",
        lazy: bool = False,
        substitute: bool = True,
        aspect: str = "pad",
        pad_color: tuple[int, int, int] | list[int] = CLIP_MEAN_RGB,
    ) -> None:
        if (num_frames is None) == (fps is None):
            raise ValueError(
                f"VideoQADataset: give exactly one of num_frames or fps; got num_frames={num_frames}, fps={fps}"
            )
        check_aspect(aspect)
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
        self.split = split
        self.lazy = bool(lazy)
        self.substitute = bool(substitute)
        self.aspect, self.pad_color = aspect, _pad_color(pad_color)
        self.num_skips = 0  # times a failing sample was replaced by another
        self.failed: dict[int, str] = {}  # index → cause; a known-bad file is not decoded again

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_error == "raise":
            return {**self._load(index), "skipped": []}
        if not self.substitute:
            if index not in self.failed:
                try:
                    return {**self._load(index), "skipped": []}
                except VideoReadError as error:
                    self._record_failure(index, error)
            self.num_skips += 1
            sample = self.samples[index]
            return {"id": sample.id, "frames": None,
                    "skipped": [(self.split, sample.id, sample.video, self.failed[index])]}
        stood_in_for = []
        for offset in range(len(self.samples)):
            k = (index + offset) % len(self.samples)
            if k not in self.failed:
                try:
                    return {**self._load(k), "skipped": stood_in_for}
                except VideoReadError as error:
                    self._record_failure(k, error)
            self.num_skips += 1
            stood_in_for.append((self.split, self.samples[k].id, self.samples[k].video, self.failed[k]))
        raise SkipLimitError(f"{self._name()}: no readable video among all {len(self.samples)} samples")

    def check_files(self) -> list[str]:
        """Stat every video (exists, a file, not empty, not a still image) before anything is decoded.

        Returns the paths that fail. ``on_error="raise"``: raises ``VideoFilesError`` naming all of
        them (up to ``LISTED``) at once. ``on_error="skip"``: they are recorded as failed, so they
        are never decoded and count against ``max_skip_fraction`` at once.
        """
        problems = {}
        for k, sample in enumerate(self.samples):
            problem = file_problem(sample.video)
            if problem is not None:
                problems[k] = problem
        if not problems:
            return []
        by_path = {self.samples[k].video: cause for k, cause in problems.items()}
        if self.on_error == "raise":
            hint = ""
            if len(problems) == len(self.samples):
                first = self.samples[0].video
                hint = f" None of the videos is readable: is the video root right (first path: {first})?"
            raise VideoFilesError(
                f"{self._name()}: {len(problems)} of {len(self.samples)} videos cannot be read "
                f"(data.check_files): {_listing(by_path)}.{hint} Fix or remove them, or set "
                f"data.on_error=skip to train without them.",
                by_path,
            )
        self.failed.update(problems)
        log.warning("%s: %d of %d videos cannot be read and will be skipped: %s",
                    self._name(), len(problems), len(self.samples), _listing(by_path))
        self._check_limit()
        return list(by_path)

    def _name(self) -> str:
        return f"{self.split} split" if self.split else "dataset"

    def _record_failure(self, index: int, error: VideoReadError) -> None:
        self.failed[index] = error.cause
        # In a dataloader worker the record may never reach the run's log (workers started by spawn
        # have no handlers): the datamodule logs it from the main process when the batch arrives.
        in_worker = get_worker_info() is not None
        level = logging.DEBUG if in_worker else logging.WARNING
        log.log(level, "skipping sample %s: %s", self.samples[index].id, error)
        self._check_limit()

    def _check_limit(self) -> None:
        limit = self.max_skip_fraction * len(self.samples)
        if len(self.failed) > limit:
            failed = {self.samples[k].video: cause for k, cause in self.failed.items()}
            raise SkipLimitError(
                f"{self._name()}: {len(self.failed)} of {len(self.samples)} videos failed to read, more than "
                f"max_skip_fraction={self.max_skip_fraction} allows ({limit:.1f}); failures: {_listing(failed)}"
            )

    def _load(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        if self.lazy:
            lazy = open_video(sample.video, num_frames=self.num_frames, fps=self.fps, max_frames=self.max_frames,
                              start=sample.start, end=sample.end, backend=self.backend, size=self.size,
                              transform=self.frame_transform, aspect=self.aspect, pad_color=self.pad_color)
            return {"id": sample.id, "frames": lazy, "times": lazy.times, "question": sample.question,
                    "answer": sample.answer, "candidates": sample.candidates, "task": sample.task,
                    "meta": sample.meta}
        clip = read_video(
            sample.video,
            num_frames=self.num_frames,
            fps=self.fps,
            max_frames=self.max_frames,
            start=sample.start,
            end=sample.end,
            backend=self.backend,
            size=self.size,
            aspect=self.aspect,
            pad_color=self.pad_color,
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

    pixels (B, T, 3, H, W) uint8 (a ``LazyFrames`` of that shape when the items are ``LazyClip``), frame_mask (B, T) bool, times (B, T) float32 (0 on padding),
    per-sample lists ids, questions, answers, candidates, tasks, meta, and ``skipped``: the
    ``(split, id, video, cause)`` of every unreadable sample this batch's items stand in for.
    """
    if not items:
        raise ValueError("collate_video_qa: empty batch")
    skipped = [entry for item in items for entry in item.get("skipped", ())]
    items = [item for item in items if item["frames"] is not None]  # evaluation's unreadable items
    if not items:  # every item of the batch was unreadable: nothing to score, only the skips to count
        return {"ids": [], "questions": [], "answers": [], "candidates": [], "tasks": [], "meta": [],
                "skipped": skipped}
    lazy = [isinstance(item["frames"], LazyClip) for item in items]
    if any(lazy) and not all(lazy):
        raise ValueError("collate_video_qa: a batch mixes lazily decoded clips with decoded frames")
    shapes = {tuple(item["frames"].shape[1:]) for item in items}
    if len(shapes) > 1:
        raise ValueError(
            f"collate_video_qa: frames of different sizes {sorted(shapes)} (as (3, H, W)) in one batch; "
            f"set frame_size so every clip is resized to the same (H, W)"
        )
    B, T = len(items), max(item["frames"].shape[0] for item in items)
    C, H, W = shapes.pop()
    lazily = all(lazy)
    pixels = LazyFrames([item["frames"] for item in items]) if lazily else torch.zeros(
        B, T, C, H, W, dtype=items[0]["frames"].dtype)
    frame_mask = torch.zeros(B, T, dtype=torch.bool)
    times = torch.zeros(B, T, dtype=torch.float32)
    for b, item in enumerate(items):
        n = item["frames"].shape[0]
        if not lazily:
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
        "skipped": skipped,
    }


class VideoDataModule(L.LightningDataModule):
    """Video QA data from the built-in synthetic benchmark or from annotation files.

    source "synthetic": ``root`` is the cache directory, ``synthetic`` the generator parameters
    (see ``ensure_synthetic``); the test split is the val split. source "suite": ``synthetic`` holds
    ``ensure_suite``'s parameters; the test split is the suite's held-out split (textures and shapes
    training never sees). source "mc_json" / "llava_json":
    ``train_file`` / ``val_file`` / ``test_file`` (relative to ``root`` unless absolute; None =
    no such split), videos relative to ``video_root`` (default: each annotation file's folder).

    Robustness (docs/robustness.md): ``setup()`` reads and validates every annotation file, then,
    with ``check_files``, stats every video and reports all missing, empty or still-image files at
    once. Under ``on_error="skip"`` the main process gathers every skipped video from the batches
    (``skipped``: path → cause, across dataloader workers), enforces ``max_skip_fraction`` per
    split over them, logs ``data/skipped`` to the trainer's loggers when it grows, and lists them
    all when the stage ends.
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
        check_files: bool = True,
        seed: int = 0,
        frame_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        lazy_decode: bool = False,
        max_text_chars: int = MAX_TEXT_CHARS,
        confine_videos: bool = False,
        aspect: str = "pad",
        pad_color: tuple[int, int, int] | list[int] = CLIP_MEAN_RGB,
    ) -> None:
        super().__init__()
        check_aspect(aspect)
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r}, expected one of {SOURCES}")
        if (num_frames is None) == (fps is None):
            raise ValueError(f"data: set exactly one of num_frames or fps; got num_frames={num_frames}, fps={fps}")
        if source not in GENERATED and not (train_file or val_file or test_file):
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
            aspect=aspect,
            pad_color=_pad_color(pad_color),
        )
        self.check_files = check_files
        self.lazy_decode = bool(lazy_decode)
        self.reader_args = dict(max_text_chars=int(max_text_chars), confine=bool(confine_videos))
        self.max_skip_fraction = max_skip_fraction
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.datasets: dict[str, VideoQADataset] = {}
        self.skipped: dict[str, str] = {}  # video path → cause, every split, gathered from the batches
        self._skipped_by_split: dict[str, dict[str, None]] = {}  # split → its skipped paths, in order
        self._logged_skips = 0

    @property
    def has_val(self) -> bool:
        """Whether there is a validation split (synthetic data always has one)."""
        return self.source == "synthetic" or bool(self.files["val"]) or "val" in self.datasets

    @property
    def has_test(self) -> bool:
        """Whether a test split distinct from val exists (synthetic data has train and val only; the
        suite's test split is its held-out one)."""
        if self.source == "suite":
            return int(self.synthetic.get("num_heldout", 1)) > 0  # absent: ensure_suite's default, > 0
        return self.source != "synthetic" and bool(self.files["test"])

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node, so generation never races with itself.
        if self.source == "synthetic":
            ensure_synthetic(self.root, **self.synthetic)
        if self.source == "suite":
            ensure_suite(self.root, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        # Every annotation file is read (and validated) before any video is looked at, so a bad
        # annotation stops the run before the slower file checks.
        splits = self._read_splits()
        # lazy_decode applies to evaluation only: training backpropagates through every frame anyway.
        # Training stands a readable sample in for an unreadable one; evaluation leaves it out, so
        # accuracy and n count only what was scored (the skips are listed in metrics.json).
        datasets = {name: VideoQADataset(samples, split=name, lazy=self.lazy_decode and name != "train",
                                         substitute=name == "train", **self.dataset_args)
                    for name, samples in splits.items()}
        if self.check_files:
            for split, dataset in datasets.items():
                dataset.check_files()  # raises, or (skip policy) marks the bad files failed up front
                for k, cause in dataset.failed.items():
                    self._add_skipped(split, dataset.samples[k].video, cause)
        self.datasets = datasets

    def _add_skipped(self, split: str, path: str, cause: str) -> bool:
        seen = self._skipped_by_split.setdefault(split, {})
        if path in seen:
            return False
        seen[path] = None
        self.skipped.setdefault(path, cause)
        return True

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Runs in the main process for every batch of every stage: the one place that sees the
        # failures of all dataloader workers.
        for split, sample_id, path, cause in batch.get("skipped", ()) if isinstance(batch, dict) else ():
            if self._add_skipped(split, path, cause):
                if self.num_workers > 0:  # without workers the dataset has logged it already
                    log.warning("skipping sample %s: %s", sample_id, VideoReadError(path, cause))
                self._check_skip_limit(split)
        if len(self.skipped) != self._logged_skips:  # also reports the files the pre-flight check found
            self._log_skip_count()
        return batch

    def _check_skip_limit(self, split: str) -> None:
        dataset = self.datasets.get(split)
        if dataset is None:
            return
        failed = self._skipped_by_split[split]
        limit = self.max_skip_fraction * len(dataset)
        if len(failed) > limit:
            listed = _listing({p: self.skipped[p] for p in failed})
            raise SkipLimitError(
                f"{split} split: {len(failed)} of {len(dataset)} videos failed to read, more than "
                f"max_skip_fraction={self.max_skip_fraction} allows ({limit:.1f}); failures: {listed}"
            )

    def _log_skip_count(self) -> None:
        self._logged_skips = len(self.skipped)
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics({"data/skipped": float(self._logged_skips)}, step=trainer.global_step)

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped:
            count, listed = len(self.skipped), _listing(self.skipped)
            log.warning("data: %d unreadable videos skipped (data/skipped): %s", count, listed)

    def _read_splits(self) -> dict[str, list[Sample]]:
        if self.source == "synthetic":
            folder = ensure_synthetic(self.root, **self.synthetic)  # returns the cached dir at once
            val = read_mc_json(folder / "val.json")
            return {"train": read_mc_json(folder / "train.json"), "val": val, "test": val}
        if self.source == "suite":
            folder = ensure_suite(self.root, **self.synthetic)  # the cached dir at once
            files = {"train": "train.json", "val": "val.json", "test": "heldout.json"}  # a split of 0 samples has none
            return {split: read_mc_json(folder / name) for split, name in files.items() if (folder / name).is_file()}
        reader = read_mc_json if self.source == "mc_json" else read_llava_json
        splits = {}
        for split, name in self.files.items():
            if name:
                path = Path(name) if os.path.isabs(name) else Path(self.root) / name
                splits[split] = reader(path, self.video_root, **self.reader_args)
        return splits

    def train_dataloader(self) -> DataLoader:
        # Shuffled by (seed, epoch), split across ranks, resumable mid-epoch: see vlc.data.sampler.
        return resumable(self._loader("train", shuffle=False), seed=self.seed)

    def val_dataloader(self) -> DataLoader | list:
        # No val split (data.val_file=null): no loader, and Lightning trains without validating.
        return self._loader("val", shuffle=False) if self.has_val else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
        if split not in self.datasets:
            given = {k: v for k, v in self.files.items() if v} if self.source not in GENERATED else self.source
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


def _pad_color(color) -> tuple[int, int, int]:
    try:
        values = tuple(color)  # a list, a tuple, or the ListConfig Hydra passes
    except TypeError:
        values = ()
    if len(values) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in values):
        raise ValueError(f"data.pad_color={color!r}, expected three integers 0-255 (R, G, B), "
                         f"e.g. {list(CLIP_MEAN_RGB)}")
    return values


def _size_pair(frame_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    if frame_size is None:
        return None
    if isinstance(frame_size, int):
        return (frame_size, frame_size)
    size = tuple(int(s) for s in frame_size)
    if len(size) != 2:
        raise ValueError(f"frame_size={frame_size!r}, expected an int or (height, width)")
    return size
