"""eval.py on the synthetic data (one record per sample with its cost; accuracy per task; latency
percentiles), the record → metrics arithmetic, and the 7B geometry config (built on the meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vlc.backbone.encoder import VisionEncoder
from vlc.backbone.llm import build_llm
from vlc.evaluation.efficiency import autocast
from vlc.evaluation.records import summarize
from vlc.run import evaluate

from conftest import TINY_DATA


def test_eval_synthetic_writes_per_sample_costs_and_aggregates(cfg_factory):
    cfg = cfg_factory(["ckpt_path=null", "compressor=pool", *TINY_DATA], name="eval")
    metrics = evaluate(cfg)
    run = Path(cfg.paths.output_dir)
    records = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 8  # data.synthetic.num_val
    for r in records:
        assert r["visual_tokens"] == 8 * 4 and r["kv_tokens"] > r["visual_tokens"]  # 8 frames × 2×2 pooled
        assert r["context_ms"] == pytest.approx(r["encoder_ms"] + r["prefill_ms"], abs=2e-3)
        assert r["kv_bytes"] > 0 and r["peak_mem_mb"] > 0 and r["batch_size"] == 4
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["val/acc"] == pytest.approx(metrics["val/acc"])
    assert on_disk["val/n"] == 8 and on_disk["val/n_needle"] == 8 and on_disk["compressor"] == "SpatialPool"
    for key in ("encoder_ms", "prefill_ms", "context_ms"):
        assert on_disk[f"val/{key}_p50"] <= on_disk[f"val/{key}_p90"]
    assert on_disk["val/visual_tokens"] == 32 and on_disk["mode"] == "eval"


def _record(task, correct, ms):
    return dict(task=task, correct=correct, visual_tokens=10, kv_tokens=12, kv_bytes=100, encoder_ms=ms,
                prefill_ms=2 * ms, context_ms=3 * ms, peak_mem_mb=ms)


def test_summarize():
    records = [_record("a", True, 1.0), _record("a", False, 2.0), _record("a", True, 3.0), _record("b", False, 4.0)]
    m = summarize(records, prefix="test")
    assert m["test/acc"] == 0.5 and m["test/n"] == 4
    assert (m["test/acc_a"], m["test/n_a"], m["test/acc_b"], m["test/n_b"]) == (pytest.approx(2 / 3), 3, 0.0, 1)
    assert m["test/acc_task_mean"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["test/encoder_ms"] == 2.5 and m["test/encoder_ms_p50"] == 2.5
    assert m["test/encoder_ms_p90"] == pytest.approx(3.7)  # linear interpolation, as numpy
    assert m["test/prefill_ms_p90"] == pytest.approx(7.4) and m["test/peak_mem_mb_max"] == 4.0
    with pytest.raises(ValueError, match="no samples"):
        summarize([])


def test_measurement_precision():
    with pytest.raises(ValueError, match="trainer.precision"):
        autocast(torch.device("cpu"), "64-true")


def test_videoxl_7b_random_has_the_published_geometry(cfg_factory):
    cfg = cfg_factory(["ckpt_path=null", "model=videoxl_7b_random"], name="eval")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert model["encoder"]["pretrained"] is False and model["llm"]["name_or_path"] is None
    with torch.device("meta"):  # shapes only: no memory, no download
        llm = build_llm(**model["llm"], vocab_size=520)
        encoder = VisionEncoder(**model["encoder"])
    c = llm.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (3584, 18944, 28)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (28, 4, 152064)
    rope_theta = c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta
    assert rope_theta == 1e6
    assert llm.dtype == torch.bfloat16
    assert sum(p.numel() for p in llm.parameters()) == 7_615_616_512  # Qwen2-7B
    assert (encoder.tokens_per_frame, encoder.dim) == (144, 1024)  # CLIP-L/14-336: 24×24 pooled 2×2


def test_eval_llava_json_generates_open_ended_answers(cfg_factory, tmp_path):
    import numpy as np

    from vlc.data.synthetic import make_haystack, write_mp4

    root = tmp_path / "llava"
    items = []
    for k in range(2):
        write_mp4(root / "videos" / f"v{k}.mp4", make_haystack(6, 32, np.random.default_rng(k)), 4.0)
        items.append({"id": f"v{k}", "video": f"videos/v{k}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat is shown?"}, {"from": "gpt", "value": "A grey haystack."}]})
    (root / "val.json").write_text(json.dumps(items))
    cfg = cfg_factory(["ckpt_path=null", "data=llava_json", f"data.root={root}", "data.train_file=null",
                       "data.val_file=val.json", "data.num_frames=4", "data.num_workers=0", "data.frame_size=32",
                       "model.max_new_tokens=4"], name="eval")
    metrics = evaluate(cfg)
    records = [json.loads(x) for x in (Path(cfg.paths.output_dir) / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["v0", "v1"]
    for r in records:
        assert isinstance(r["prediction"], str) and r["candidates"] is None and r["visual_tokens"] == 4 * 16
    assert metrics["val/acc"] == np.mean([r["correct"] for r in records]) and metrics["val/n_val"] == 2


def test_normalize_answer():
    from vlc.evaluation.records import normalize_answer

    assert normalize_answer("  The Red, square!") == normalize_answer("red square") == "red square"


def test_eval_changes_the_checkpoints_compressor_settings(cfg_factory, tmp_path):
    """ckpt_compressor: a vst checkpoint evaluated at another ratio keeps that many fewer/more beacons;
    an unknown key, a wrong type or an impossible ratio stops with the key named."""
    from vlc.run import evaluate, train

    run = cfg_factory(["experiment=vst_ratio16", *TINY_DATA, "trainer.max_steps=1", "compressor.window=32",
                       "callbacks.progress_bar.refresh_rate=0"])
    train(run)
    ckpt = Path(run.paths.output_dir, "checkpoints", "last.ckpt")
    base = ["ckpt_path=" + str(ckpt), *TINY_DATA]
    at16 = evaluate(cfg_factory(base, name="eval"))
    at4 = evaluate(cfg_factory(base + ["+ckpt_compressor.ratio=4"], name="eval"))
    plain = evaluate(cfg_factory(base + ["+ckpt_compressor.compress=false"], name="eval"))
    assert (at16["val/kv_tokens"], at4["val/kv_tokens"], plain["val/kv_tokens"]) == (4 + 8, 4 + 32, 4 + 128)
    assert at4["ckpt_compressor"] == {"ratio": 4} and "ckpt_compressor" not in at16
    with pytest.raises(ValueError, match="ckpt_path is null"):
        evaluate(cfg_factory(["ckpt_path=null", *TINY_DATA, "+ckpt_compressor.ratio=4"], name="eval"))
    from vlc.model.video_llm import VideoLLM

    model = VideoLLM.load_from_checkpoint(str(ckpt), map_location="cpu")
    for bad, match in [({"ratoi": 4}, "compressor.ratoi: VisualSummarizationTokens takes no such setting"),
                       ({"compress": 1}, "compressor.compress=1: a true/false setting"),
                       ({"ratio": 4.5}, r"compressor.ratio=4.5 \(vst\): raw tokens per beacon at inference"),
                       ({"ratio": 64}, r"compressor.ratio=64 \(vst\): raw tokens per beacon at inference, an integer "
                                       r"in 1..window \(window=32\)")]:
        with pytest.raises(ValueError, match=match):
            model.with_compressor(bad)
    assert model.compressor.ratio == 16  # a refused change leaves the compressor as it was
