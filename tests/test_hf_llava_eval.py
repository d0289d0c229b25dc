"""The training-free comparison, end to end with no vlc checkpoint:

    python eval.py model=llava_onevision_0.5b compressor=<c> data=mvbench data.root=... ckpt_path=null

on a tiny saved LLaVA-OneVision (``model.backbone.name_or_path`` pointing at its folder) and an
MVBench-layout folder, for each training-free compressor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hf_tiny import save_tiny_llava_onevision

from vlc.data.synthetic import make_haystack, write_mp4
from vlc.run import evaluate

from conftest import compose_config

ITEMS = [
    {"video": "video_10.mp4", "question": "Where is the hidden object at the end?",
     "candidates": ["Under the first cup.", "Under the second cup.", "Under the third cup."],
     "answer": "Under the second cup."},
    {"video": "video_11.mp4", "question": "Where is the ball?", "candidates": ["Left.", "Middle.", "Right."],
     "answer": "Right."},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("MVBench")
    (root / "json").mkdir()
    (root / "json" / "object_shuffle.json").write_text(json.dumps(ITEMS))
    rng = np.random.default_rng(0)
    for item in ITEMS:
        write_mp4(root / "video" / "perception" / "videos" / item["video"], make_haystack(8, 32, rng), 4.0)
    return save_tiny_llava_onevision(tmp_path_factory.mktemp("llava_ov_eval")), root


# Visual tokens that reach the LLM per sample for 4 frames of 9 (the newline is layout, not counted).
# diffp keeps all: the haystack's fresh per-frame noise changes every patch of the 16 px frames; keyframe keeps the
# first frame only: the haystack frames' mean SigLIP features stay within cos 0.93 of it.
EXPECTED_TOKENS = {"none": [36, 36], "pool": [16, 16], "diffp": [36, 36], "keyframe": [9, 9],
                   "budget": [36, 36], "moviechat": [18, 18]}


@pytest.mark.parametrize("compressor", ["none", "pool", "diffp", "keyframe", "budget", "moviechat"])
def test_eval_runs_llava_onevision_training_free(folders, compressor, tmp_path):
    model_dir, root = folders
    cfg = compose_config("eval", [
        "model=llava_onevision_0.5b", f"model.backbone.name_or_path={model_dir}", "model.backbone.dtype=float32",
        "model.backbone.attn_implementation=sdpa", f"compressor={compressor}", "ckpt_path=null",
        "data=mvbench", f"data.root={root}", "data.include=[object_shuffle]", "data.num_frames=4",
        "data.frame_size=16", "data.num_workers=0", "data.batch_size=2", "prompt.answer_style=letter",
    ], tmp_path)
    metrics = evaluate(cfg)
    lines = [json.loads(x) for x in (Path(cfg.paths.output_dir) / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(r["prediction"] in r["candidates"] for r in lines)
    assert [r["visual_tokens"] for r in lines] == EXPECTED_TOKENS[compressor]
    assert [r["frames"] for r in lines] == [4, 4]
    assert 0.0 <= metrics["val/acc"] <= 1.0
