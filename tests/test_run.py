"""Runs end to end through the real composed configs: every experiment runs a batch, a short run
leaves a complete run directory, and the same seed gives the same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlc.run import CONFIG_DIR, train

from conftest import TINY_DATA

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def _offline(experiment: str) -> list[str]:
    """Experiments for real models (hub weights, GPUs) run here on the tiny backbone and the CPU."""
    text = (CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text()
    parents = [line.strip()[2:] for line in text.splitlines() if line.startswith("  - ") and "/" not in line]
    real = "override /model:" in text or any(_offline(p) for p in parents if p in EXPERIMENTS)
    return ["model=tiny", "model.llm.dtype=float32", "trainer=cpu", "trainer.accumulate_grad_batches=1"] if real else []


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_one_batch(cfg_factory, experiment):
    cfg = cfg_factory([f"experiment={experiment}", "debug=fdr", *TINY_DATA, *_offline(experiment)])
    out = train(cfg)
    assert out["fast_dev_run"] is True


SHORT_RUN = [*TINY_DATA, "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
             "callbacks.progress_bar.refresh_rate=0"]


def test_short_run_writes_a_complete_run_directory(cfg_factory):
    cfg = cfg_factory(["experiment=pool_baseline", *SHORT_RUN])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "config_resolved.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "csv" / "metrics.csv").is_file()
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["train_steps"] == 6 and on_disk["compressor"] == "SpatialPool"
    for key in ("val/acc", "val/visual_tokens", "val/kv_tokens", "val/kv_bytes", "val/prefill_ms", "val/peak_mem_mb"):
        assert key in on_disk, key
    assert on_disk["val/visual_tokens"] == 8 * 4  # 8 frames x (4x4 patches pooled 2x2)
    lines = (run / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 8  # one per validation sample
    assert metrics["val/acc"] == on_disk["val/acc"]


def test_same_seed_same_metrics(cfg_factory, tmp_path):
    def run(sub: str) -> dict:
        cfg = cfg_factory(["experiment=none_baseline", *SHORT_RUN])
        cfg.paths.output_dir = str(tmp_path / sub)
        Path(cfg.paths.output_dir).mkdir()
        return json.loads(Path(train(cfg) and cfg.paths.output_dir, "metrics.json").read_text())

    a, b = run("a"), run("b")
    for key in ("val/acc", "train/loss", "val/visual_tokens", "val/kv_bytes"):
        assert a[key] == b[key], key
    def predictions(sub: str) -> list[dict]:  # timings and memory are measured, not computed: left out
        rows = [json.loads(x) for x in (tmp_path / sub / "predictions.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.endswith(("_ms", "_mb"))} for r in rows]

    assert predictions("a") == predictions("b") and len(predictions("a")) == 8


def test_uncompressed_phase_bypasses_the_compressor_then_starts_it(cfg_factory, monkeypatch):
    """model.uncompressed_steps=2: training steps 0-1 run the plain model (vst: no beacons in
    the cache; the step-2 hook re-copies the beacons once), validation always compresses, and the
    checkpoint after step 3 records the switch so a resumed run does not copy again."""
    import torch

    from vlc.compressors.vst import VisualSummarizationTokens

    from vlc.model.pipeline import VideoPipeline

    seen: list[tuple[bool, int]] = []  # (training, KV length) per context built, in order
    copies: list[int] = []
    real_encode = VideoPipeline.encode_context

    def encode(self, batch, watch=None, compress=True):
        ctx = real_encode(self, batch, watch, compress)
        seen.append((self.training, int(torch.as_tensor(ctx.length).max())))
        return ctx

    real_start = VisualSummarizationTokens.on_compression_start

    def start(self, llm, tokenizer):
        copies.append(1)
        return real_start(self, llm, tokenizer)

    monkeypatch.setattr(VideoPipeline, "encode_context", encode)
    monkeypatch.setattr(VisualSummarizationTokens, "on_compression_start", start)
    cfg = cfg_factory(["experiment=vst_ratio16", "model.uncompressed_steps=2", *SHORT_RUN])
    train(cfg)
    train_lengths = [n for training, n in seen if training]  # one per training step: 0, 1, 2, …
    val_lengths = {n for training, n in seen if not training}
    raw = max(train_lengths[0], train_lengths[1])
    assert train_lengths[2] < raw and all(n < raw for n in val_lengths)  # beacons from step 2, and at validation
    assert len(copies) == 1
    file = Path(cfg.paths.output_dir, "checkpoints", "step_000003.ckpt")
    state = torch.load(file, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3 and int(state["state_dict"]["compression_started_at"]) == 2


def test_ratio_curriculum_counts_compressed_steps_from_the_switch(cfg_factory, monkeypatch):
    """compressor.curriculum: stage i is drawn from during compressed steps [i, i+1) x steps/stages,
    counted from the switch (model.uncompressed_steps), then compressor.ratios."""
    from vlc.compressors.vst import VisualSummarizationTokens
    from vlc.model.video_llm import VideoLLM

    drawn: dict[int, set[int]] = {}  # global step -> ratios drawn in training windows
    real_draw = VisualSummarizationTokens._draw_ratio

    def draw(self):
        r = real_draw(self)
        if self.training:
            drawn.setdefault(self._trainer_step, set()).add(r)
        return r

    real_start = VideoLLM.on_train_batch_start

    def start(self, batch, batch_idx):
        real_start(self, batch, batch_idx)
        self.compressor._trainer_step = self.global_step

    monkeypatch.setattr(VisualSummarizationTokens, "_draw_ratio", draw)
    monkeypatch.setattr(VideoLLM, "on_train_batch_start", start)
    cfg = cfg_factory(["experiment=vst_ratio16", "model.uncompressed_steps=2", *SHORT_RUN,
                       "trainer.max_steps=6", "compressor.window=32",
                       "compressor.curriculum=[[2],[4]]", "compressor.curriculum_steps=2"])
    train(cfg)
    assert sorted(drawn) == [2, 3, 4, 5]  # no beacons before the switch at step 2
    assert drawn[2] == {2} and drawn[3] == {4}  # compressed steps 0 and 1: the two stages
    assert drawn[4] | drawn[5] <= {2, 4, 8, 12, 16} and len(drawn[4] | drawn[5]) > 1  # then every ratio
    with pytest.raises(ValueError, match="curriculum_steps >= 3"):
        VisualSummarizationTokens(window=32, curriculum=[[2], [4], [8]], curriculum_steps=2)
    with pytest.raises(ValueError, match=r"compressor.curriculum \(vst\): \[64\] outside 1..window \(window=32\)"):
        VisualSummarizationTokens(window=32, curriculum=[[64]], curriculum_steps=4)


def test_needle_attention_script_on_a_short_vst_run(cfg_factory, capsys):
    """scripts/vst_needle_attention.py on a trained checkpoint: per-colour mass in [0, 1] over every
    validation clip (the script checks its weights reproduce the model's attention output)."""
    import sys

    cfg = cfg_factory(["experiment=vst_ratio16", *SHORT_RUN, "trainer.max_steps=2", "trainer.val_check_interval=2",
                       "compressor.window=64"])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    hydra_dir = Path(cfg.paths.output_dir, ".hydra")
    hydra_dir.mkdir(exist_ok=True)  # train.py's Hydra writes this; the test composes without it
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    sys.path.insert(0, str(CONFIG_DIR.parent / "scripts"))
    try:
        import vst_needle_attention
    finally:
        sys.path.pop(0)
    out = vst_needle_attention.main([str(ckpt)])
    assert sum(n for _, _, n, _ in out.values()) == 8  # TINY_DATA: 8 validation clips
    assert all(0.0 <= mass <= 1.0 and 0.0 <= acc <= 1.0 for mass, acc, _, _ in out.values())
    assert all(len(heads) == 4 and max(heads) == mass for mass, _, _, heads in out.values())  # model=tiny: 4 heads
    assert "needle mass" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="layers 0..0"):  # model=tiny has 2 layers: only layer 0's beacons are read
        vst_needle_attention.main([str(ckpt), "--layer", "1"])
