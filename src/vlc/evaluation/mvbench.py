"""MVBench (Li et al., CVPR 2024) read from its published directory layout.

    <root>/json/<task>.json         one JSON list per task: video, question, candidates, answer,
                                    and start/end (seconds) for the tasks whose clip is a window
    <root>/video/<folder>/<video>   the source datasets' videos, one folder per source

Which folder holds which task's videos, and which tasks honour start/end, is a table in
``configs/data/mvbench.yaml`` (MVBench's own ``data_list``), not code. One task (episodic
reasoning, from TVQA) ships frames instead of a video: a folder of ``00001.jpg …`` sampled at 3 fps,
read here by ``read_frame_folder``. Scoring is MVBench's: options listed as "(A) …", the answer
read after "Best option:(" (``prompt.answer_style=letter``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from vlc.data.annotations import Sample, read_mc_json
from vlc.data.datamodule import VideoQADataset, collate_video_qa
from vlc.data.sampling import frame_times, sample_indices
from vlc.data.video import VideoClip, VideoReadError, resize_frames

log = logging.getLogger(__name__)

KINDS = ("video", "frames")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_mvbench(
    root: str | os.PathLike,
    tasks: dict[str, dict[str, Any]],
    include: list[str] | None = None,
    json_dir: str = "json",
    video_dir: str = "video",
) -> list[Sample]:
    """Samples of every task in ``tasks`` (or only those named in ``include``), in table order.

    tasks: ``{name: {json, folder, kind ("video" | "frames"), bound (bool), frames_fps}}``. A
    sample's ``task`` is its table name, its video ``<root>/<video_dir>/<folder>/<video>``; start
    and end are kept only where ``bound`` is true, as MVBench reads them.
    """
    root = Path(root).expanduser()
    if not (root / json_dir).is_dir():
        raise FileNotFoundError(f"data.root={root}: no {json_dir}/ folder; expected MVBench's layout json/ + video/")
    names = list(tasks)
    if include is not None:
        unknown = [t for t in include if t not in tasks]
        if unknown:
            raise ValueError(f"data.include: unknown MVBench tasks {unknown}; the table has {names}")
        names = [t for t in names if t in include]
    files = {t: root / json_dir / tasks[t]["json"] for t in names}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"MVBench annotation files missing: {missing}; restrict the run with data.include=[...] "
            f"or fix data.root={root}"
        )
    samples: list[Sample] = []
    for name in names:
        spec = tasks[name]
        kind = spec.get("kind", "video")
        if kind not in KINDS:
            raise ValueError(f"data.tasks.{name}.kind={kind!r}; expected one of {KINDS}")
        folder = root / video_dir / spec["folder"]
        bound = bool(spec.get("bound", False))
        for s in read_mc_json(files[name], video_root=folder):
            meta = {**s.meta, "source": spec["folder"]}
            if kind == "frames":
                meta["frames_fps"] = float(spec.get("frames_fps", 3.0))
            window = dict(start=s.start, end=s.end) if bound else dict(start=None, end=None)
            samples.append(replace(s, task=name, meta=meta, **window))
    return samples


def read_frame_folder(
    path: str | os.PathLike,
    native_fps: float,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    size: tuple[int, int] | None = None,
) -> VideoClip:
    """A video stored as numbered images (``00001.jpg`` …, sorted by name) at ``native_fps``,
    sampled like ``read_video`` samples a file."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise VideoReadError(path, "missing frame folder (no such directory)")
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_SUFFIXES))
    if not names:
        raise VideoReadError(path, f"no {'/'.join(FRAME_SUFFIXES)} frames in the folder")
    indices = sample_indices(len(names), native_fps, num_frames, fps, max_frames, start, end)
    unique, inverse = np.unique(indices, return_inverse=True)
    decoded = []
    for i in unique:
        try:
            with Image.open(os.path.join(path, names[i])) as image:
                decoded.append(np.array(image.convert("RGB")))  # a writable copy
        except OSError as error:
            raise VideoReadError(path, f"cannot read frame {names[i]} ({error})") from error
    frames = [torch.from_numpy(d) for d in decoded]  # (H, W, 3) uint8 each
    if size is not None:
        frames = [resize_frames(f[None], size)[0] for f in frames]
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) > 1:
        raise VideoReadError(path, f"frames of different sizes {sorted(shapes)}; set data.frame_size")
    clip = torch.stack(frames)[torch.from_numpy(inverse)]  # (T, H, W, 3) uint8
    times = torch.from_numpy(frame_times(indices, native_fps))
    return VideoClip(frames=clip, times=times, native_fps=native_fps, duration=len(names) / native_fps, path=path)


class FrameFolderDataset(Dataset):
    """``VideoQADataset``'s items for samples whose video is a folder of frames."""

    def __init__(self, samples: list[Sample], num_frames: int | None = None, fps: float | None = None,
                 max_frames: int | None = None, frame_size: int | tuple[int, int] | None = None) -> None:
        self.samples = list(samples)
        self.num_frames, self.fps, self.max_frames = num_frames, fps, max_frames
        self.size = (frame_size, frame_size) if isinstance(frame_size, int) else tuple(frame_size or ()) or None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        clip = read_frame_folder(s.video, s.meta["frames_fps"], self.num_frames, self.fps, self.max_frames,
                                 s.start, s.end, self.size)
        return {"id": s.id, "frames": clip.frames.permute(0, 3, 1, 2).contiguous(), "times": clip.times,
                "question": s.question, "answer": s.answer, "candidates": s.candidates, "task": s.task, "meta": s.meta}


class MVBenchDataModule(L.LightningDataModule):
    """All MVBench tasks as one evaluation split (served as both val and test).

    root: the MVBench folder (with json/ and video/). tasks: the task table (see the config).
    include: task names to keep (None: all). The frame-sampling and error-policy arguments are
    ``VideoQADataset``'s; ``frame_size`` is required in practice, since the sources differ in size.
    """

    def __init__(
        self,
        root: str,
        tasks: dict[str, dict[str, Any]],
        include: list[str] | None = None,
        json_dir: str = "json",
        video_dir: str = "video",
        num_frames: int | None = 16,
        fps: float | None = None,
        max_frames: int | None = None,
        backend: str = "decord",
        frame_size: int | tuple[int, int] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        on_error: str = "raise",
        max_skip_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root, self.tasks, self.include = root, dict(tasks), list(include) if include is not None else None
        self.json_dir, self.video_dir = json_dir, video_dir
        self.sampling = dict(num_frames=num_frames, fps=fps, max_frames=max_frames)
        self.video_args = dict(backend=backend, frame_size=frame_size, on_error=on_error,
                               max_skip_fraction=max_skip_fraction)
        self.frame_size = frame_size
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.dataset: Dataset | None = None
        self.samples: list[Sample] = []

    has_test = True

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        self.samples = read_mvbench(self.root, self.tasks, self.include, self.json_dir, self.video_dir)
        videos = [s for s in self.samples if "frames_fps" not in s.meta]
        folders = [s for s in self.samples if "frames_fps" in s.meta]
        parts: list[Dataset] = []
        if videos:
            dataset = VideoQADataset(videos, **self.sampling, **self.video_args)
            missing = dataset.check_files()
            if missing:
                log.warning("MVBench: %d of %d videos missing, e.g. %s", len(missing), len(videos), missing[0])
            parts.append(dataset)
        if folders:
            absent = [s for s in folders if not os.path.isdir(s.video)]
            if absent and self.video_args["on_error"] == "raise":
                raise VideoReadError(absent[0].video, f"missing frame folder ({len(absent)} of {len(folders)} missing)")
            if absent:
                log.warning("MVBench: skipping %d samples whose frame folder is missing, e.g. %s",
                            len(absent), absent[0].video)
            parts.append(FrameFolderDataset([s for s in folders if os.path.isdir(s.video)], **self.sampling,
                                            frame_size=self.frame_size))
        self.dataset = ConcatDataset(parts)
        log.info("MVBench: %d samples from %d tasks", len(self.samples), len({s.task for s in self.samples}))

    def _loader(self) -> DataLoader:
        if self.dataset is None:
            raise RuntimeError("MVBenchDataModule: call setup() first")
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate_video_qa)

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    test_dataloader = val_dataloader
