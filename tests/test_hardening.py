"""Hostile-input cases (docs/robustness.md): weights-only init_from, evaluation that accounts for
skipped videos, resume that protects every interval, non-finite gradients caught before the step,
annotations refused at read time."""

from __future__ import annotations

import json
import os
import pickle
import time
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


# ---- non-finite gradients are caught before the optimizer step ------------------------------------


def test_nan_gradients_with_a_finite_loss_stop_before_the_step(cfg_factory, monkeypatch):
    """At step 3 the loss stays finite but its gradients are NaN (d sqrt(x)/dx at 0, times 0): the
    guard names step 3 and that batch, and the last checkpoint (step 3) holds finite weights."""
    from vlc.callbacks import NonFiniteLossError
    from vlc.model.video_llm import VideoLLM

    poisoned: dict[str, list[str]] = {}
    forward = VideoLLM.forward

    def nan_grads_at_step_3(self, batch):
        loss = forward(self, batch)
        if self.training and self.trainer.global_step == 3:
            poisoned["ids"] = list(batch["ids"])
            weight = self.backbone.projector.net[0].weight
            return loss + torch.sqrt(weight.sum() * 0.0)  # + 0, gradient nan
        return loss

    monkeypatch.setattr(VideoLLM, "forward", nan_grads_at_step_3)
    cfg = cfg_factory([*TINY_DATA, "experiment=pool_baseline", "trainer.max_steps=6", "trainer.val_check_interval=2",
                       "++callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.progress_bar.refresh_rate=0"])
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert message.startswith(f"non-finite gradients at step 3 (epoch 0, batch 3) with a finite loss, in ")
    assert f"sample ids in this batch: {poisoned['ids']}. Training stopped before the optimizer step" in message
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())


def test_no_checkpoint_is_written_from_nonfinite_weights(cfg_factory):
    from vlc.callbacks import NonFiniteLossError, NonFiniteLossGuard
    from vlc.run import build_model

    model = build_model(cfg_factory(["~data"]))
    with torch.no_grad():
        model.backbone.projector.net[0].weight[0, 0] = float("nan")

    class Trainer:
        global_step = 7

    with pytest.raises(NonFiniteLossError, match=r"refusing to write a checkpoint at step 7: 1 parameters hold "
                                                 r"NaN/Inf \(first: pipeline.backbone.projector.net.0.weight\)"):
        NonFiniteLossGuard().on_save_checkpoint(Trainer(), model, {})


# ---- checkpoint files ---------------------------------------------------------------------------


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    import subprocess

    from vlc.training.checkpoint_io import AtomicCheckpointIO

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    path = tmp_path / "last.ckpt"
    stale = tmp_path / f"last.ckpt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_full_disk_names_the_checkpoint_file_once(tmp_path, monkeypatch):
    import errno

    from vlc.training import checkpoint_io

    path = tmp_path / "last.ckpt"
    checkpoint_io.AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", full)
    with pytest.raises(OSError, match=rf"writing checkpoint {path} failed: No space left on device \(the previous "
                                      rf"last.ckpt is kept\)") as info:
        checkpoint_io.AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert torch.load(path, weights_only=True) == {"step": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ---- annotations refused at read time -----------------------------------------------------------


def _mc(tmp_path, **changes):
    from vlc.data.annotations import read_mc_json

    item = {"video": "v.mp4", "question": "Which?", "candidates": ["red", "green"], "answer": "red", **changes}
    path = tmp_path / "a.json"
    path.write_text(json.dumps([item]))
    return lambda **kw: read_mc_json(path, **kw)


def test_more_than_26_candidates_are_refused_when_read(tmp_path):
    from vlc.data.annotations import AnnotationError

    options = [f"option {k}" for k in range(27)]
    with pytest.raises(AnnotationError, match=r"a.json, item 0, key 'candidates': 27 candidates, expected 2 to 26 "
                                              r"\(options are lettered A-Z\)"):
        _mc(tmp_path, candidates=options, answer="option 0")()
    assert len(_mc(tmp_path, candidates=options[:26], answer="option 0")()[0].candidates) == 26


@pytest.mark.parametrize("candidates, message", [
    (["red", " "], r"candidate 1 is empty ' ', expected text"),
    (["red", "Red "], r"candidate 1 'Red ' repeats candidate 0 'red'"),
    (["a  b", "A b"], r"candidate 1 'A b' repeats candidate 0 'a  b'"),
])
def test_empty_and_near_duplicate_candidates_are_refused(tmp_path, candidates, message):
    from vlc.data.annotations import AnnotationError

    with pytest.raises(AnnotationError, match=message):
        _mc(tmp_path, candidates=candidates, answer=candidates[0])()


def test_text_longer_than_the_cap_is_refused(tmp_path):
    from vlc.data.annotations import AnnotationError

    read = _mc(tmp_path, question="x" * 100_000)
    with pytest.raises(AnnotationError, match=r"item 0: question is 100000 characters, over data.max_text_chars=8000"):
        read()
    assert read(max_text_chars=200_000)[0].question == "x" * 100_000


def test_deeply_nested_json_is_an_annotation_error(tmp_path):
    from vlc.data.annotations import AnnotationError, read_mc_json

    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnotationError, match=r"deep.json: JSON nested too deeply to read"):
        read_mc_json(path)


def test_llava_question_that_is_only_the_placeholder_is_refused(tmp_path):
    from vlc.data.annotations import AnnotationError, read_llava_json

    path = tmp_path / "l.json"
    path.write_text(json.dumps([{"id": 1, "video": "v.mp4", "conversations": [
        {"from": "human", "value": "<video>\n "}, {"from": "gpt", "value": "A cat."}]}]))
    with pytest.raises(AnnotationError, match=r"item 0, key 'conversations': turn 0 \(human\) has no question"):
        read_llava_json(path)


def test_videos_can_be_confined_to_the_video_root(tmp_path):
    from vlc.data.annotations import AnnotationError

    read = _mc(tmp_path, video="../../etc/passwd")
    assert read()[0].video.endswith("etc/passwd")  # allowed unless asked for
    with pytest.raises(AnnotationError, match=r"key 'video': video '../../etc/passwd' resolves to .*etc/passwd, "
                                              r"outside the video root"):
        read(confine=True)


# ---- open-ended data trains and validates ---------------------------------------------------------


def _llava_folder(root: Path, n: int) -> Path:
    import numpy as np

    from vlc.data.synthetic import make_haystack, write_mp4

    for split in ("train", "val"):
        items = []
        for k in range(n):
            write_mp4(root / "videos" / f"{split}{k}.mp4", make_haystack(6, 32, np.random.default_rng(k)), 4.0)
            items.append({"id": f"{split}{k}", "video": f"videos/{split}{k}.mp4", "conversations": [
                {"from": "human", "value": "<video>\nWhat is shown?"}, {"from": "gpt", "value": "a grey haystack"}]})
        (root / f"{split}.json").write_text(json.dumps(items))
    return root


def test_open_ended_llava_data_trains_and_validates(cfg_factory, tmp_path):
    """train.py data=llava_json: training on generated answers, validation by greedy generation
    scored by exact match (val/acc) and token F1 (val/f1); no candidates anywhere."""
    root = _llava_folder(tmp_path / "llava", 4)
    data = ["data=llava_json", f"data.root={root}", "data.train_file=train.json", "data.val_file=val.json",
            "data.num_frames=4", "data.frame_size=32", "data.batch_size=2", "model.max_new_tokens=6"]
    metrics = train(cfg_factory([*data, "trainer.max_steps=4", "trainer.val_check_interval=4",
                                 "callbacks.progress_bar.refresh_rate=0", "optim.lr=3e-3"]))
    assert metrics["train_steps"] == 4 and metrics["val/n"] == 4
    assert 0.0 <= metrics["val/acc"] <= metrics["val/f1"] <= 1.0
    assert Path(metrics["checkpoint"]).name == "step_000004.ckpt"

    def elsewhere(overrides: list[str], sub: str):
        cfg = cfg_factory(overrides)
        cfg.paths.output_dir = str(tmp_path / sub)
        Path(cfg.paths.output_dir).mkdir()
        return train(cfg)

    # no val split: trains, keeps last.ckpt, reports training only
    alone = elsewhere([*data, "data.val_file=null", "trainer.max_steps=2", "callbacks.progress_bar.refresh_rate=0"],
                      "no_val_file")
    assert alone["train_steps"] == 2 and "val/acc" not in alone and alone["checkpoint"].endswith("last.ckpt")
    no_val = elsewhere([*data, "trainer.limit_val_batches=0", "trainer.max_steps=2",
                        "callbacks.progress_bar.refresh_rate=0"], "limit_0")
    assert no_val["train_steps"] == 2 and "val/acc" not in no_val


def test_a_run_shorter_than_the_validation_interval_validates_at_its_end(cfg_factory):
    metrics = train(cfg_factory([*TINY_DATA, "trainer.max_steps=3", "trainer.val_check_interval=500",
                                 "callbacks.progress_bar.refresh_rate=0"]))
    assert metrics["checkpoint"].endswith("step_000003.ckpt") and metrics["val/n"] == 8


def test_thread_count_follows_the_cpus_the_process_may_use(cfg_factory, monkeypatch):
    from vlc import run

    assert 1 <= run.usable_cpus() <= (os.cpu_count() or 1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(run, "usable_cpus", lambda: 4)
    monkeypatch.setattr(run, "busy_cpus", lambda: 0)
    before = torch.get_num_threads()
    try:
        assert run.configure_threads(cfg_factory(["data.num_workers=1"])) == 3  # a core for the decoding worker
        assert run.configure_threads(cfg_factory(["data.num_workers=8"])) == 1
        assert run.configure_threads(cfg_factory(["threads=2"])) == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(run, "busy_cpus", lambda: 2)  # two other jobs on the machine
        assert run.configure_threads(cfg_factory([])) == 2
        assert run.configure_threads(cfg_factory(["data.num_workers=1"])) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert run.configure_threads(cfg_factory([])) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs /proc/stat")
def test_busy_cpus_sees_a_process_spinning_now():
    """A process spinning on one core is one busy CPU (or more, with whatever else runs); the count
    is what runs now, not the 1-minute load average."""
    import subprocess
    import sys

    from vlc import run

    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)  # the interpreter is up and spinning
        assert run.busy_cpus(window=0.5) >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_a_run_shorter_than_the_warmup_still_trains_its_compressor(cfg_factory, caplog):
    from vlc.run import fit_warmup_to_run

    cfg = cfg_factory(["compressor=pool", "trainer.max_steps=300", "model.uncompressed_steps=500"])
    assert fit_warmup_to_run(cfg).model.uncompressed_steps == 150
    assert "model.uncompressed_steps=500 >= trainer.max_steps=300 would never train the compressor" in caplog.text
    kept = cfg_factory(["compressor=pool", "trainer.max_steps=1000", "model.uncompressed_steps=500"])
    assert fit_warmup_to_run(kept).model.uncompressed_steps == 500
    plain = cfg_factory(["compressor=none", "trainer.max_steps=300", "model.uncompressed_steps=500"])
    assert fit_warmup_to_run(plain).model.uncompressed_steps == 500  # nothing to train: left alone


def test_debug_fdr_runs_the_compressed_path_with_the_guard(cfg_factory, monkeypatch):
    from vlc.model.pipeline import VideoPipeline

    seen = []
    real = VideoPipeline.loss

    def loss(self, batch, compress=True, one_pass=False):
        seen.append(compress)
        return real(self, batch, compress, one_pass)

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vlc.run import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        raw = compose("train", overrides=["debug=fdr", "experiment=pool_baseline"])
    assert raw.model.uncompressed_steps == 0 and "nonfinite_loss" in raw.callbacks  # model=tiny alone has 500
    monkeypatch.setattr(VideoPipeline, "loss", loss)
    train(cfg_factory(["debug=fdr", "experiment=pool_baseline", *TINY_DATA]))
    assert seen == [True]  # the one training batch compressed


def test_a_data_error_is_one_paragraph_and_exit_2(tmp_path):
    """A missing annotation file through train.py: one line on stderr naming the file, status 2, no
    traceback (as config errors read)."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, str(root / "train.py"), "data=mc_json", f"data.root={tmp_path}",
                          "data.train_file=nowhere.json", "data.val_file=null", f"hydra.run.dir={tmp_path / 'run'}", "logger=none"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {tmp_path / 'nowhere.json'}: annotation file not found"]
    assert "Traceback" not in out.stderr
