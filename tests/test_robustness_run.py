"""End to end through ``vlc.run.train`` on a tiny set with 1 corrupt video in 20 (5 %): under skip
the run finishes and reports exactly that video (its path in the log, data/skipped = 1 in the
metrics); under raise it stops at that video, naming its path."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest

from vlc.data.synthetic import ensure_synthetic
from vlc.data.video import VideoReadError
from vlc.run import train

SYNTHETIC = dict(task="needle", num_frames=8, frame_size=32, fps=4.0, num_train=20, num_val=4, seed=0)
CORRUPT = 7  # the train item whose video is cut short


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, str]:
    """mc_json files over copies of the synthetic videos; train item 7 truncated to 400 bytes."""
    synthetic = ensure_synthetic(tmp_path_factory.mktemp("syn"), **SYNTHETIC)
    root = tmp_path_factory.mktemp("mc")
    for split in ("train", "val"):
        items = json.loads((synthetic / f"{split}.json").read_text())
        for k, item in enumerate(items):
            dst = root / split / f"{k:02d}.mp4"
            dst.parent.mkdir(exist_ok=True)
            if split == "train" and k == CORRUPT:
                dst.write_bytes((synthetic / item["video"]).read_bytes()[:400])
            else:
                shutil.copy(synthetic / item["video"], dst)
            item["video"] = f"{split}/{k:02d}.mp4"
        (root / f"{split}.json").write_text(json.dumps(items))
    return root, str(root / "train" / f"{CORRUPT:02d}.mp4")


def overrides(root: Path, on_error: str) -> list[str]:
    # 20 samples / batch 5 = 4 steps: one epoch, so every video is read once.
    return ["data=mc_json", f"data.root={root}", "data.train_file=train.json", "data.val_file=val.json",
            "data.num_frames=2", "data.frame_size=32", "data.batch_size=5", "data.num_workers=1",
            f"data.on_error={on_error}", "data.max_skip_fraction=0.05", "trainer.max_steps=4",
            "trainer.val_check_interval=4", "trainer.log_every_n_steps=1", "callbacks.progress_bar.refresh_rate=0",
            "optim.warmup_steps=1"]


def test_skip_finishes_and_reports_exactly_the_corrupt_video(cfg_factory, dataset, caplog):
    root, corrupt = dataset
    cfg = cfg_factory(overrides(root, "skip"))
    with caplog.at_level(logging.WARNING, logger="vlc.data"):
        metrics = train(cfg)
    assert metrics["train_steps"] == 4 and "val/acc" in metrics
    # The log names the file (when it is met, and in the summary at the end of each stage) ...
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name.startswith("vlc.data")]
    met = [w for w in warnings if w.startswith("skipping sample")]
    assert met == [f"skipping sample needle-train-{CORRUPT:06d}: cannot read video {corrupt}: cannot open: file "
                   f"corrupt, truncated or not a video (InvalidDataError: [Errno 1094995529] Invalid data found "
                   f"when processing input)"]
    summaries = [w for w in warnings if w.startswith("data: ")]
    assert summaries and all(w.startswith(f"data: 1 unreadable videos skipped (data/skipped): {corrupt}: ")
                             for w in summaries)
    assert all(corrupt in w for w in warnings)  # no other file is ever named
    # ... and the count is in the metrics.
    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    assert {float(r["data/skipped"]) for r in rows if r.get("data/skipped")} == {1.0}


def test_raise_stops_at_the_corrupt_video_naming_it(cfg_factory, dataset):
    root, corrupt = dataset
    cfg = cfg_factory(overrides(root, "raise"))
    with pytest.raises(VideoReadError) as info:
        train(cfg)
    assert info.value.path == corrupt  # through the dataloader worker, type and path intact
    assert info.value.cause.startswith("cannot open: file corrupt, truncated or not a video")
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()
