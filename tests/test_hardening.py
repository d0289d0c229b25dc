"""Hostile-input cases (docs/robustness.md): weights-only init_from, evaluation that accounts for
skipped videos, resume that protects every interval, non-finite gradients caught before the step,
annotations refused at read time."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from vlc.run import evaluate, train

from conftest import TINY_DATA
from test_robustness_data import make_split, synthetic  # noqa: F401 - the fixture

SHORT = [*TINY_DATA, "trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.progress_bar.refresh_rate=0"]


# ---- init_from reads tensors only -------------------------------------------------------------


class _Payload:
    def __reduce__(self):  # unpickling this calls os.system("touch <file>")
        return (os.system, (f"touch {_Payload.marker}",))


def test_init_from_refuses_a_pickle_payload(cfg_factory, tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Payload()}, f)
    cfg = cfg_factory([*SHORT, f"init_from={path}"])
    with pytest.raises(ValueError, match=r"init_from=.*evil.ckpt: refused, the file holds more than tensors"):
        train(cfg)
    assert not (tmp_path / "pwned").exists()


# ---- evaluation counts skipped videos as training does ------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_leaves_unreadable_videos_out_and_lists_them(cfg_factory, synthetic, tmp_path, workers):  # noqa: F811
    """4 of 10 videos truncated, on_error=skip: only the 6 readable ones are scored (n = 6, no
    stand-in scored twice), metrics.json names the 4, with workers too."""
    folder = tmp_path / "mc"
    make_split(synthetic, folder, {1: "truncated", 4: "truncated", 6: "truncated", 9: "truncated"}, name="val.json")
    data = ["data=mc_json", f"data.root={folder}", "data.train_file=null", "data.val_file=val.json",
            "data.num_frames=4", "data.on_error=skip", "data.max_skip_fraction=0.5", "data.check_files=false",
            f"data.num_workers={workers}", "data.batch_size=2"]
    metrics = evaluate(cfg_factory(["ckpt_path=null", *data], name="eval"))
    run = Path(cfg_factory([], name="eval").paths.output_dir)
    records = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert metrics["val/n"] == 6 and len(records) == 6 and len({r["id"] for r in records}) == 6
    assert metrics["data/skipped"] == 4 and len(metrics["data/skipped_files"]) == 4
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["data/skipped"] == 4 and on_disk["val/acc"] == pytest.approx(sum(r["correct"] for r in records) / 6)

    from vlc.data.datamodule import SkipLimitError

    limited = [*data[:-3], "data.max_skip_fraction=0.1", f"data.num_workers={workers}", "data.batch_size=2"]
    with pytest.raises(SkipLimitError, match=r"val split: 2 of 10 videos failed to read, more than "
                                             r"max_skip_fraction=0.1 allows \(1.0\)"):
        evaluate(cfg_factory(["ckpt_path=null", *limited], name="eval"))
