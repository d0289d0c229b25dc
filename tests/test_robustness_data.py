"""The datamodule's bad-video policy: the pre-flight file check reports every bad file at once;
under skip, failures in dataloader workers reach the main process, are counted once per file,
logged as data/skipped, and stop the run past max_skip_fraction of a split."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from vlc.data.datamodule import SkipLimitError, VideoDataModule, VideoFilesError, VideoQADataset
from vlc.data.synthetic import ensure_synthetic

SYNTHETIC = dict(task="needle", num_frames=8, frame_size=32, fps=4.0, num_train=10, num_val=2, seed=0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("data"), **SYNTHETIC)


def make_split(synthetic: Path, folder: Path, bad: dict[int, str], name: str = "train.json") -> tuple[Path, list[str]]:
    """The synthetic train items as an mc_json file in ``folder``, with items ``bad`` broken:
    {index: "missing" | "empty" | "image" | "truncated" | "directory"}. Returns the file and the video paths."""
    folder.mkdir(parents=True, exist_ok=True)
    items = json.loads((synthetic / "train.json").read_text())
    paths = []
    for k, item in enumerate(items):
        src = synthetic / item["video"]
        dst = folder / f"{k:02d}.mp4"
        kind = bad.get(k)
        if kind == "empty":
            dst.write_bytes(b"")
        elif kind == "image":
            Image.new("RGB", (32, 32), "red").save(dst, format="PNG")
        elif kind == "truncated":
            dst.write_bytes(src.read_bytes()[:400])
        elif kind == "directory":
            dst.mkdir()
        elif kind != "missing":
            shutil.copy(src, dst)
        item["video"] = str(dst)
        paths.append(str(dst))
    (folder / name).write_text(json.dumps(items))
    return folder / name, paths


def datamodule(folder: Path, **kwargs) -> VideoDataModule:
    args = dict(source="mc_json", root=str(folder), train_file="train.json", num_frames=2, batch_size=1)
    return VideoDataModule(**{**args, **kwargs})


def test_preflight_reports_every_bad_file_at_once(synthetic, tmp_path):
    bad = {1: "missing", 4: "empty", 6: "image", 8: "directory", 9: "truncated"}
    _, paths = make_split(synthetic, tmp_path, bad)
    dm = datamodule(tmp_path)
    with pytest.raises(VideoFilesError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert message.startswith("train split: 4 of 10 videos cannot be read (data.check_files): ")
    for k, cause in ((1, "missing file (no such path)"), (4, "zero-byte file"), (6, "a still PNG image, not a video"),
                     (8, "is a directory, expected a video file")):
        assert f"{paths[k]}: {cause}" in message
    assert paths[9] not in message  # truncated: only decoding can tell, so it is left to the loader
    assert message.endswith("Fix or remove them, or set data.on_error=skip to train without them.")
    assert info.value.problems[paths[1]] == "missing file (no such path)" and len(info.value.problems) == 4
    # Off: nothing is checked up front, and the first bad file stops the loader instead.
    unchecked = datamodule(tmp_path, check_files=False)
    unchecked.setup("fit")
    assert len(unchecked.datasets["train"]) == 10


def test_preflight_with_every_video_missing_points_at_the_video_root(synthetic, tmp_path):
    make_split(synthetic, tmp_path, {k: "missing" for k in range(10)})
    with pytest.raises(VideoFilesError, match=re.escape("None of the videos is readable: is the video root right")):
        datamodule(tmp_path).setup("fit")


def test_preflight_under_skip_marks_bad_files_and_applies_the_limit_at_once(synthetic, tmp_path, caplog):
    _, paths = make_split(synthetic, tmp_path, {2: "missing", 5: "empty"})
    with caplog.at_level(logging.WARNING, logger="vlc.data.datamodule"):
        dm = datamodule(tmp_path, on_error="skip", max_skip_fraction=0.2)
        dm.setup("fit")
    assert dm.skipped == {paths[2]: "missing file (no such path)", paths[5]: "zero-byte file"}
    assert "train split: 2 of 10 videos cannot be read and will be skipped" in caplog.text
    dataset = dm.datasets["train"]
    assert [dataset[k]["id"] for k in (2, 5)] == ["needle-train-000003", "needle-train-000006"]
    with pytest.raises(SkipLimitError, match=r"train split: 2 of 10 videos failed to read, more than "
                                             r"max_skip_fraction=0.1 allows \(1.0\)"):
        datamodule(tmp_path, on_error="skip", max_skip_fraction=0.1).setup("fit")


def test_skips_in_workers_reach_the_main_process_once_per_file(synthetic, tmp_path):
    """Two workers, one corrupt file each: neither worker passes the limit alone; the main process
    sees both, counts each file once however often it is stood in for, and stops past the limit."""
    _, paths = make_split(synthetic, tmp_path, {3: "truncated", 6: "truncated"})
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))

    def run(max_skip_fraction: float, epochs: int = 1) -> VideoDataModule:
        dm = datamodule(tmp_path, on_error="skip", max_skip_fraction=max_skip_fraction, num_workers=2)
        dm.trainer = SimpleNamespace(loggers=[logger], global_step=7)
        dm.setup("validate")
        dm.datasets["val"] = dm.datasets["train"]  # iterate the train split in order
        for _ in range(epochs):
            for batch in dm.val_dataloader():
                dm.on_before_batch_transfer(batch, 0)
        return dm

    dm = run(0.2, epochs=2)
    assert dm.skipped.keys() == {paths[3], paths[6]}
    assert all(cause.startswith("cannot open: file corrupt, truncated or not a video") for cause in dm.skipped.values())
    assert [m["data/skipped"] for _, m in logged] == [1.0, 2.0] and {s for s, _ in logged} == {7}
    with pytest.raises(SkipLimitError, match=r"train split: 2 of 10 videos failed to read, more than "
                                             r"max_skip_fraction=0.1 allows \(1.0\)"):
        run(0.1)


def test_teardown_lists_every_skipped_file(synthetic, tmp_path, caplog):
    _, paths = make_split(synthetic, tmp_path, {0: "truncated"})
    dm = datamodule(tmp_path, on_error="skip", max_skip_fraction=0.1)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        dm.on_before_batch_transfer(batch, 0)
    with caplog.at_level(logging.WARNING, logger="vlc.data.datamodule"):
        dm.teardown("fit")
    summary = rf"data: 1 unreadable videos skipped \(data/skipped\): {re.escape(paths[0])}: cannot open"
    assert re.search(summary, caplog.text)


def test_dataset_items_say_whom_they_stand_in_for(synthetic, tmp_path):
    folder, paths = make_split(synthetic, tmp_path, {4: "truncated", 5: "empty"})
    from vlc.data.annotations import read_mc_json

    dataset = VideoQADataset(read_mc_json(folder), num_frames=2, on_error="skip", max_skip_fraction=0.5, split="train")
    item = dataset[4]
    assert item["id"] == "needle-train-000006"
    assert [(s, i, p) for s, i, p, _ in item["skipped"]] == [
        ("train", "needle-train-000004", paths[4]), ("train", "needle-train-000005", paths[5])]
    assert dataset[6]["skipped"] == [] and dataset.num_skips == 2
