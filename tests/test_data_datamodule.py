"""Dataset items, collation with padding, the skip policy, the datamodule and its configs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from vlc.data.annotations import Sample, read_mc_json
from vlc.data.datamodule import VideoDataModule, VideoQADataset, collate_video_qa
from vlc.data.video import VideoReadError

CONFIGS = Path(__file__).parents[1] / "configs" / "data"
SYNTHETIC = dict(task="needle", num_frames=8, frame_size=32, fps=4.0, num_train=8, num_val=4, seed=0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    dm = VideoDataModule(source="synthetic", root=str(root), synthetic=SYNTHETIC, num_frames=8)
    dm.prepare_data()
    return root


@pytest.fixture(scope="module")
def samples(data_root) -> list[Sample]:
    folder = next(data_root.glob("needle-*"))
    return read_mc_json(folder / "train.json")


def test_item_layout_and_frame_transform(samples):
    item = VideoQADataset(samples, num_frames=4)[2]
    assert item["id"] == "needle-train-000002" and item["task"] == "needle"
    assert item["frames"].shape == (4, 3, 32, 32) and item["frames"].dtype == torch.uint8
    assert item["times"].tolist() == [0.25, 0.75, 1.25, 1.75]  # frames 1, 3, 5, 7 at 4 fps
    assert item["answer"] in item["candidates"] and item["meta"]["length"] == 8

    flipped = VideoQADataset(samples, num_frames=4, frame_transform=lambda f: f.flip(-1), frame_size=16)[2]
    assert flipped["frames"].shape == (4, 3, 16, 16)
    again = VideoQADataset(samples, num_frames=4, frame_size=16)[2]
    assert torch.equal(flipped["frames"], again["frames"].flip(-1))


def test_collate_pads_and_masks(samples):
    windows = [(None, None), (0.5, 1.0), (1.0, 1.0)]  # 8, 3 and 1 frames at 4 fps
    items = [
        VideoQADataset([Sample(**{**vars(samples[k]), "start": s, "end": e})], fps=4.0)[0]
        for k, (s, e) in enumerate(windows)
    ]
    assert [len(i["times"]) for i in items] == [8, 3, 1]
    batch = collate_video_qa(items)
    assert batch["pixels"].shape == (3, 8, 3, 32, 32) and batch["pixels"].dtype == torch.uint8
    assert batch["frame_mask"].sum(1).tolist() == [8, 3, 1]
    assert batch["frame_mask"][1].tolist() == [True] * 3 + [False] * 5
    assert batch["times"][1].tolist() == [0.5, 0.75, 1.0, 0, 0, 0, 0, 0]
    assert batch["times"][2].tolist() == [1.0] + [0.0] * 7
    assert batch["pixels"][1, 3:].abs().sum() == 0 and batch["pixels"][2, 1:].abs().sum() == 0
    assert torch.equal(batch["pixels"][1, :3], items[1]["frames"])
    assert batch["ids"] == [s.id for s in samples[:3]]
    assert batch["candidates"][0] == samples[0].candidates and batch["meta"][2] == samples[2].meta
    assert set(batch) == {
        "pixels", "frame_mask", "times", "ids", "questions", "answers", "candidates", "tasks", "meta", "skipped"
    }  # fmt: skip
    assert batch["skipped"] == []


def test_collate_rejects_mixed_sizes(samples):
    a = VideoQADataset(samples[:1], num_frames=2)[0]
    b = VideoQADataset(samples[:1], num_frames=2, frame_size=16)[0]
    with pytest.raises(ValueError, match="set frame_size"):
        collate_video_qa([a, b])


@pytest.fixture
def with_broken(samples, tmp_path) -> list[Sample]:
    """10 samples, of which items 3 (truncated) and 6 (zero bytes) cannot be read."""
    out = []
    for k in range(10):
        src = Path(samples[k % len(samples)].video)
        dst = tmp_path / f"{k}.mp4"
        if k == 3:
            dst.write_bytes(src.read_bytes()[:300])
        elif k == 6:
            dst.write_bytes(b"")
        else:
            shutil.copy(src, dst)
        out.append(Sample(**{**vars(samples[k % len(samples)]), "id": f"s{k}", "video": str(dst)}))
    return out


def test_raise_policy_names_the_file(with_broken):
    dataset = VideoQADataset(with_broken, num_frames=2)
    assert dataset[2]["id"] == "s2"
    with pytest.raises(VideoReadError, match="3.mp4: cannot open: file corrupt, truncated or not a video"):
        dataset[3]


def test_skip_policy_counts_logs_and_gives_up(with_broken, caplog):
    dataset = VideoQADataset(with_broken, num_frames=2, on_error="skip", max_skip_fraction=0.1)
    with caplog.at_level(logging.WARNING, logger="vlc.data.datamodule"):
        assert dataset[3]["id"] == "s4"  # the next readable sample stands in
    assert dataset.num_skips == 1 and list(dataset.failed) == [3]
    assert "s3" in caplog.text and with_broken[3].video in caplog.text and "file corrupt" in caplog.text
    assert dataset[3]["id"] == "s4" and dataset.num_skips == 2  # known-bad: skipped without decoding
    # 1 of 10 failed is within 0.1; the second unreadable file exceeds it.
    with pytest.raises(RuntimeError, match=r"2 of 10 videos failed to read, more than max_skip_fraction=0.1") as info:
        dataset[6]
    assert with_broken[6].video in str(info.value) and "zero-byte file" in str(info.value)

    lenient = VideoQADataset(with_broken, num_frames=2, on_error="skip", max_skip_fraction=0.2)
    assert [lenient[k]["id"] for k in range(10)] == ["s0", "s1", "s2", "s4", "s4", "s5", "s7", "s7", "s8", "s9"]
    assert lenient.num_skips == 2 and sorted(lenient.failed) == [3, 6]


def test_synthetic_datamodule_loaders(data_root):
    loader_args = dict(source="synthetic", root=str(data_root), synthetic=SYNTHETIC, num_frames=4, batch_size=4, seed=3)
    dm = VideoDataModule(**loader_args)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (8, 4) and not dm.has_test
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixels"].shape == (4, 4, 3, 32, 32) and batch["pixels"].dtype == torch.uint8
    assert batch["frame_mask"].all() and batch["times"][0].tolist() == [0.25, 0.75, 1.25, 1.75]

    def order(loader):
        return [i for b in loader for i in b["ids"]]

    train_ids = order(dm.train_dataloader())
    assert sorted(train_ids) == [f"needle-train-{i:06d}" for i in range(8)]
    assert train_ids != sorted(train_ids)  # shuffled …
    same_seed = VideoDataModule(**loader_args)
    same_seed.setup("fit")
    assert order(same_seed.train_dataloader()) == train_ids  # … reproducibly
    assert order(dm.val_dataloader()) == [f"needle-val-{i:06d}" for i in range(4)]  # ordered
    assert order(dm.test_dataloader()) == order(dm.val_dataloader())
    assert dm.train_dataloader().persistent_workers is False

    workers = VideoDataModule(source="synthetic", root=str(data_root), synthetic=SYNTHETIC, num_workers=1)
    workers.setup("fit")
    assert workers.val_dataloader().persistent_workers is True


def test_mc_json_datamodule_reports_missing_videos_in_setup(data_root, tmp_path):
    folder = next(data_root.glob("needle-*"))
    items = json.loads((folder / "val.json").read_text())
    for item in items:
        item["video"] = str(folder / item["video"])
    items[1]["video"] = str(tmp_path / "gone.mp4")
    (tmp_path / "val.json").write_text(json.dumps(items))

    dm = VideoDataModule(source="mc_json", root=str(tmp_path), val_file="val.json", test_file="val.json", num_frames=2)
    with pytest.raises(VideoReadError, match=r"val split: 1 of 4 videos cannot be read .*gone.mp4: missing file"):
        dm.setup("validate")
    lenient = VideoDataModule(
        source="mc_json", root=str(tmp_path), val_file="val.json", num_frames=2, on_error="skip", max_skip_fraction=0.25
    )
    lenient.setup("validate")
    # the unreadable item is left out of evaluation, not replaced by its neighbour (which would count twice)
    assert [i for b in lenient.val_dataloader() for i in b["ids"]] == [f"needle-val-00000{i}" for i in (0, 2, 3)]
    with pytest.raises(RuntimeError, match="no train data"):
        lenient.train_dataloader()
    assert dm.has_test and not lenient.has_test


def test_configs_instantiate(data_root):
    common = OmegaConf.create({"paths": {"data_dir": str(data_root)}, "seed": 7})
    cfg = OmegaConf.merge(common, {"data": OmegaConf.load(CONFIGS / "synthetic.yaml")})
    assert OmegaConf.to_container(cfg.data.synthetic) == {
        "task": "needle", "num_frames": 32, "frame_size": 32, "fps": 4.0,
        "num_train": 2000, "num_val": 200, "seed": 0, "needle_frames": 1, "shape_size": [1.0, 1.0],
    }  # fmt: skip
    assert (cfg.data.batch_size, cfg.data.num_workers, cfg.data.seed) == (8, 0, 7)
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, VideoDataModule) and dm.root == f"{data_root}/synthetic" and dm.synthetic["num_train"] == 2000

    for name, source in (("mc_json", "mc_json"), ("llava_json", "llava_json")):
        cfg = OmegaConf.merge(common, {"data": OmegaConf.load(CONFIGS / f"{name}.yaml")})
        assert OmegaConf.is_missing(cfg.data, "train_file") and OmegaConf.is_missing(cfg.data, "val_file")
        cfg.data.train_file, cfg.data.val_file = "train.json", None
        dm = hydra.utils.instantiate(cfg.data)
        assert dm.source == source and dm.files == {"train": "train.json", "val": None, "test": None}
