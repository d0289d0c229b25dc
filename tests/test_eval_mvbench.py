"""MVBench read from its published layout (json/<task>.json + video/<folder>/...), scored by letter
end to end on a random-init tiny model, and the eval prompt applied over a checkpoint's."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from vlc.data.synthetic import make_haystack, write_mp4
from vlc.evaluation.mvbench import FrameFolderDataset, MVBenchDataModule, read_frame_folder, read_mvbench
from vlc.run import CONFIG_DIR, build_model, evaluate, load_eval_model

from conftest import compose_config

FPS = 4.0  # fixture videos: 8 frames at 4 fps = 2 s
SEQUENCE = [  # a "bound" task: MVBench samples only inside start/end
    {"video": "AB12C.mp4", "question": "What did the person do after opening the door?",
     "candidates": ["Sat on the sofa.", "Took the towel.", "Closed the laptop.", "Held the food."],
     "answer": "Took the towel.", "start": 0.5, "end": 1.5},
    {"video": "XY34Z.mp4", "question": "What did the person do first?",
     "candidates": ["Opened the box.", "Threw the bag."], "answer": "Threw the bag.", "start": 0.0, "end": 1.0},
]
SHUFFLE = [  # not bound: a start/end in the file is ignored, as MVBench ignores it
    {"video": "video_10.mp4", "question": "Where is the hidden object at the end?",
     "candidates": ["Under the first cup.", "Under the second cup.", "Under the third cup."],
     "answer": "Under the second cup.", "start": 1.0, "end": 2.0},
    {"video": "video_11.mp4", "question": "Where is the ball?",
     "candidates": ["Left.", "Middle.", "Right."], "answer": "Right."},
]


def tasks_table() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / "mvbench.yaml").tasks)


@pytest.fixture(scope="module")
def mvbench_root(tmp_path_factory) -> Path:
    """A two-task MVBench folder laid out exactly as published, plus one frame-folder task."""
    root = tmp_path_factory.mktemp("MVBench")
    (root / "json").mkdir()
    rng = np.random.default_rng(0)
    for name, items, folder in (("action_sequence", SEQUENCE, "star/Charades_v1_480"),
                                ("object_shuffle", SHUFFLE, "perception/videos")):
        (root / "json" / f"{name}.json").write_text(json.dumps(items))
        for item in items:
            write_mp4(root / "video" / folder / item["video"], make_haystack(8, 32, rng), FPS)
    # episodic_reasoning ships TVQA frames (00001.jpg ...) at 3 fps instead of videos
    episodic = [{"video": "s01e02_seg02_clip_03", "question": "Why did he leave?", "start": 1.0, "end": 2.0,
                 "candidates": ["He was late.", "He was angry.", "He was called."], "answer": "He was called."}]
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps(episodic))
    frames = root / "video" / "tvqa" / "frames_fps3_hq" / episodic[0]["video"]
    frames.mkdir(parents=True)
    for k in range(9):  # 3 s at 3 fps; frame k is filled with the value 20·k
        Image.fromarray(np.full((24, 40, 3), 20 * k, np.uint8)).save(frames / f"{k + 1:05d}.jpg")
    return root


def test_the_task_table_is_mvbench(mvbench_root):
    table = tasks_table()
    assert len(table) == 20
    assert table["action_sequence"] == {"json": "action_sequence.json", "folder": "star/Charades_v1_480",
                                        "kind": "video", "bound": True}
    assert sorted(t for t, s in table.items() if s["bound"]) == [
        "action_localization", "action_prediction", "action_sequence", "episodic_reasoning", "object_interaction"]
    assert [t for t, s in table.items() if s["kind"] == "frames"] == ["episodic_reasoning"]


def test_reader_maps_tasks_to_video_folders_and_keeps_windows_only_where_bound(mvbench_root):
    samples = read_mvbench(mvbench_root, tasks_table(), include=["action_sequence", "object_shuffle"])
    assert [s.task for s in samples] == ["action_sequence"] * 2 + ["object_shuffle"] * 2
    assert samples[0].video == str(mvbench_root / "video/star/Charades_v1_480/AB12C.mp4")
    assert samples[2].video == str(mvbench_root / "video/perception/videos/video_10.mp4")
    assert (samples[0].start, samples[0].end) == (0.5, 1.5)
    assert (samples[2].start, samples[2].end) == (None, None)  # object_shuffle is not bound
    assert len({s.id for s in samples}) == 4
    with pytest.raises(ValueError, match="unknown MVBench tasks"):
        read_mvbench(mvbench_root, tasks_table(), include=["action_sequense"])
    with pytest.raises(FileNotFoundError, match="moving_count.json"):
        read_mvbench(mvbench_root, tasks_table(), include=["moving_count"])


def test_start_end_window_is_honoured(mvbench_root):
    dm = MVBenchDataModule(str(mvbench_root), tasks_table(), include=["action_sequence"], num_frames=4, frame_size=32)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    times = batch["times"][0]
    assert batch["pixels"].shape == (1, 4, 3, 32, 32)
    assert times.min() >= 0.5 and times.max() <= 1.5  # frames of [0.5 s, 1.5 s] only


def test_frame_folder_task(mvbench_root):
    (s,) = read_mvbench(mvbench_root, tasks_table(), include=["episodic_reasoning"])
    clip = read_frame_folder(s.video, 3.0, num_frames=3, start=s.start, end=s.end, size=(32, 32))
    assert clip.frames.shape == (3, 32, 32, 3)
    assert torch.all((clip.times >= 1.0) & (clip.times <= 2.0))  # frames 3..6 of 9 at 3 fps
    values = clip.frames.float().mean((1, 2, 3)) / 20  # frame k was filled with 20·k
    torch.testing.assert_close(values, clip.times * 3, atol=0.2, rtol=0)
    item = FrameFolderDataset([s], num_frames=3, frame_size=32)[0]
    assert item["frames"].shape == (3, 3, 32, 32) and item["task"] == "episodic_reasoning"


def test_mvbench_letter_scoring_end_to_end(mvbench_root, tmp_path):
    cfg = compose_config("eval", [
        "ckpt_path=null", "data=mvbench", f"data.root={mvbench_root}", "data.include=[action_sequence,object_shuffle]",
        "data.num_frames=4", "data.num_workers=0", "data.batch_size=3", "prompt.answer_style=letter",
    ], tmp_path)
    assert cfg.data.frame_size == 32  # the encoder's input size
    metrics = evaluate(cfg)
    run = Path(cfg.paths.output_dir)
    lines = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 4  # one per sample
    assert {r["task"] for r in lines} == {"action_sequence", "object_shuffle"}
    for r in lines:
        assert r["prediction"] in r["candidates"] and len(r["scores"]) == len(r["candidates"])
        assert r["visual_tokens"] == 4 * 16 and r["frames"] == 4
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["val/n_action_sequence"] == 2 and on_disk["val/n_object_shuffle"] == 2
    acc = np.mean([r["correct"] for r in lines])
    assert on_disk["val/acc"] == pytest.approx(acc) == metrics["val/acc"]
    for key in ("val/acc_action_sequence", "val/acc_object_shuffle", "val/prefill_ms_p90", "val/kv_bytes"):
        assert key in on_disk, key
    # the letter prompt: options listed "(A) …", scored after "Best option:(" by the letters' likelihood
    model = load_eval_model(cfg)
    assert model.pipeline.prompt.candidate_texts(SHUFFLE[0]["candidates"]) == ["A", "B", "C"]
    question = model.pipeline.prompt.question_text("Q?", ["x", "y"])
    assert question.endswith("(A) x\n(B) y<|im_end|>\n<|im_start|>assistant\nBest option:(")


def test_eval_prompt_applies_over_a_checkpoints_prompt(cfg_factory, tmp_path):
    torch.manual_seed(0)
    train_cfg = cfg_factory(["~data", "prompt.time_markers=true"])
    model = build_model(train_cfg)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__}, ckpt)
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", "prompt.answer_style=letter"], tmp_path / "eval")
    loaded = load_eval_model(cfg)
    assert loaded.pipeline.prompt.answer_style == "letter"
    assert loaded.pipeline.prompt.time_markers is True  # the checkpoint's, kept where the eval prompt is null
    cfg = compose_config("eval", [f"ckpt_path={ckpt}"], tmp_path / "eval2")
    assert load_eval_model(cfg).pipeline.prompt.answer_style == "text"
