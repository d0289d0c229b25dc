"""vlc as an lmms-eval model (``vlc.integrations.lmms``): lmms-eval's own evaluator, through the
entry point, on task YAMLs written here over generated videos and local JSON files, gives the same
answers, accuracy and cost figures as ``eval.py`` on the same items and overrides.

Needs the ``lmms`` extra (``pip install -e '.[dev,lmms]'``); without it the module is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: pip install -e '.[dev,lmms]'")

from conftest import TINY_DATA  # noqa: E402

# A pool checkpoint (2x2 average pool: 16 → 4 tokens per frame) trained a few steps, so generation
# says something and the options score differently.
TRAIN = [*TINY_DATA, "compressor=pool", "trainer.max_steps=20", "trainer.val_check_interval=20",
         "callbacks.progress_bar.refresh_rate=0"]
FRAMES, TOKENS_PER_FRAME, PREFIX = 8, 4, 4  # "<|im_start|>user\n" is 4 tokens of the tiny tokenizer
KV_BYTES_PER_ENTRY = 2 * 2 * 2 * 32 * 4  # layers × (K, V) × kv heads × head dim × fp32 bytes (model=tiny)

TASK_UTILS = '''
import os

from vlc.evaluation.records import normalize_answer

ROOT = {root!r}


def doc_to_visual(doc):
    return [os.path.join(ROOT, doc["video"])]


def llava_question(doc):
    return doc["conversations"][0]["value"]


def llava_answer(doc):
    return doc["conversations"][1]["value"]


def exact_match(doc, results):  # eval.py's open-ended scoring
    return {{"exact_match": float(normalize_answer(results[0]) == normalize_answer(llava_answer(doc)))}}
'''

MC_TASK = '''
task: vlc_mc
dataset_path: json
dataset_kwargs:
  data_files: {{test: {file}}}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: question
doc_to_choice: candidates
doc_to_target: answer
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
'''

GEN_TASK = '''
task: vlc_gen
dataset_path: json
dataset_kwargs:
  data_files: {{test: {file}}}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.llava_question
doc_to_target: !function utils.llava_answer
process_results: !function utils.exact_match
generation_kwargs: {{max_new_tokens: 16, until: ["<|im_end|>"]}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
'''

# lmms-eval's simple_evaluate, in its own process (it patches filelock and ssl globally), with the
# task index limited to the tasks written here and every hub lookup switched off.
DRIVER = '''
import json, sys
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager

spec = json.loads(sys.argv[1])
manager = TaskManager("WARNING", include_path=spec["tasks"], include_defaults=False, model_name="vlc")
out = {}
for task, model_args in spec["runs"].items():
    res = simple_evaluate(model="vlc", model_args=model_args, tasks=[task], task_manager=manager,
                          log_samples=True, bootstrap_iters=0)
    out[task] = dict(results=res["results"][task], throughput=res["throughput"], samples=res["samples"][task],
                     efficiency=res["efficiency"]["by_task"][task])
with open(spec["out"], "w") as f:
    json.dump(out, f, default=str)
'''


def _offline_env(tmp_path: Path) -> dict[str, str]:
    hf = tmp_path / "hf"
    return {**os.environ, "HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}


def _predictions(cfg) -> dict[str, dict]:
    lines = (Path(cfg.paths.output_dir) / "predictions.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_entry_point_registers_vlc():
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model

    from vlc.integrations.lmms.model import VLC

    (ep,) = [e for e in entry_points().select(group="lmms_eval.models") if e.name == "vlc"]
    assert ep.value == "vlc.integrations.lmms:manifest"
    assert get_model("vlc") is VLC and VLC.is_simple


def test_model_args_are_eval_py_overrides():
    """lmms-eval's own parsing of model_args, turned back into Hydra overrides and composed: lists
    and quoted strings keep their commas, bools and numbers keep their types."""
    from lmms_eval.utils import simple_parse_args_string

    from vlc.integrations.lmms.model import compose_eval_config, hydra_overrides

    args = ("ckpt_path=null,model=tiny,compressor=vst,compressor.ratio=16,data.frame_size=[24,32],"
            "prompt.extra_instruction='Look closely, then answer.',prompt.time_markers=true,data.fps=0.5,"
            "data.num_frames=null,+ckpt_compressor.window=64")
    overrides = hydra_overrides(simple_parse_args_string(args))
    assert overrides == ["ckpt_path=null", "model=tiny", "compressor=vst", "compressor.ratio=16",
                         "data.frame_size=[24,32]", "prompt.extra_instruction='Look closely, then answer.'",
                         "prompt.time_markers=true", "data.fps=0.5", "data.num_frames=null",
                         "+ckpt_compressor.window=64"]
    cfg = compose_eval_config(overrides)
    assert cfg.ckpt_path is None and cfg.compressor.ratio == 16 and list(cfg.data.frame_size) == [24, 32]
    assert cfg.prompt.extra_instruction == "Look closely, then answer." and cfg.prompt.time_markers is True
    assert cfg.data.fps == 0.5 and cfg.data.num_frames is None and cfg.ckpt_compressor.window == 64
    # Lightning names checkpoints epoch=0-step=10.ckpt: a value holding "=" is quoted for Hydra
    (quoted,) = hydra_overrides(simple_parse_args_string("ckpt_path='/runs/epoch=0-step=10.ckpt'"))
    assert compose_eval_config([quoted]).ckpt_path == "/runs/epoch=0-step=10.ckpt"
    with pytest.raises(ValueError, match="model_args has no ckpt_path"):
        compose_eval_config(["compressor=pool"])


def test_lmms_eval_gives_eval_py_answers_and_costs(cfg_factory, tmp_path):
    from vlc.data.synthetic import ensure_synthetic
    from vlc.run import evaluate, train

    run = cfg_factory(TRAIN)
    train(run)
    ckpt = Path(run.paths.output_dir, "checkpoints", "last.ckpt")
    synthetic = ensure_synthetic(run.data.root, **run.data.synthetic)
    items = json.loads((synthetic / "val.json").read_text())  # 8 needle questions, 4 options each
    llava = [{"id": it["id"], "video": str(synthetic / it["video"]), "conversations": [
        {"from": "human", "value": it["question"]}, {"from": "gpt", "value": it["answer"]}]} for it in items]
    (tmp_path / "open.json").write_text(json.dumps(llava))

    common = [f"ckpt_path={ckpt}", f"data.num_frames={FRAMES}", "data.batch_size=3", "data.num_workers=0"]
    mc_args = [*common, "data=mc_json", f"data.root={synthetic}", "data.train_file=null", "data.val_file=val.json"]
    gen_args = [*common, "data=llava_json", f"data.root={tmp_path}", "data.train_file=null",
                "data.val_file=open.json"]
    ours = {}
    for task, args in (("vlc_mc", mc_args), ("vlc_gen", gen_args)):
        cfg = cfg_factory(args, name="eval")
        ours[task] = (evaluate(cfg), _predictions(cfg))

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(TASK_UTILS.format(root=str(synthetic)))
    (tasks / "vlc_mc.yaml").write_text(MC_TASK.format(file=synthetic / "val.json"))
    (tasks / "vlc_gen.yaml").write_text(GEN_TASK.format(file=tmp_path / "open.json"))
    (tmp_path / "driver.py").write_text(DRIVER)
    spec = dict(tasks=str(tasks), out=str(tmp_path / "lmms.json"),
                runs={"vlc_mc": ",".join(mc_args), "vlc_gen": ",".join(gen_args)})
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), json.dumps(spec)], env=_offline_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    lmms = json.loads((tmp_path / "lmms.json").read_text())

    # multiple choice: per document the option lmms-eval picks (argmin of the losses vlc returned)
    # is eval.py's, and the losses are eval.py's log-likelihoods negated
    metrics, records = ours["vlc_mc"]
    samples = lmms["vlc_mc"]["samples"]
    assert len(samples) == len(records) == 8
    for s in samples:
        r = records[s["doc"]["id"]]
        losses = [float(resp[0]) for resp in s["filtered_resps"]]
        assert losses.index(min(losses)) == r["pred_index"]
        assert [-x for x in losses] == pytest.approx(r["scores"], abs=1e-4)
        assert s["acc"] == float(r["correct"])
        cost = s["token_counts"][0]
        assert (cost["visual_tokens"], cost["kv_tokens"], cost["frames"]) == (r["visual_tokens"], r["kv_tokens"], FRAMES)
        assert s["token_counts"][1:] == [None, None, None]  # one context per document, counted once
    assert lmms["vlc_mc"]["results"]["acc,none"] == pytest.approx(metrics["val/acc"])
    picked = sorted(r["pred_index"] for r in records.values())
    assert len(set(picked)) > 1, f"the checkpoint picks one option position for every item: {picked}"

    # generation: the same text for every document, the same exact-match accuracy
    metrics, records = ours["vlc_gen"]
    samples = lmms["vlc_gen"]["samples"]
    assert {s["doc"]["id"]: s["filtered_resps"][0] for s in samples} == {i: r["prediction"] for i, r in records.items()}
    assert any(r["prediction"] for r in records.values()), "the checkpoint generates nothing: train it longer"
    assert lmms["vlc_gen"]["results"]["exact_match,none"] == pytest.approx(metrics["val/acc"])
    for s in samples:
        cost = s["token_counts"][0]
        assert cost["output_tokens"] >= 1 or not s["filtered_resps"][0]

    # the cost figures: pinned, and summarised per task in the results file as eval.py's metrics.json
    visual = FRAMES * TOKENS_PER_FRAME
    for task in ("vlc_mc", "vlc_gen"):
        metrics, records = ours[task]
        summary = lmms[task]["throughput"]
        assert summary[f"avg_vlc/{task}/n"] == len(records) == 8
        assert summary[f"avg_vlc/{task}/visual_tokens"] == metrics["val/visual_tokens"] == visual
        assert summary[f"avg_vlc/{task}/kv_tokens"] == metrics["val/kv_tokens"] == PREFIX + visual
        assert summary[f"avg_vlc/{task}/kv_bytes"] == metrics["val/kv_bytes"] == (PREFIX + visual) * KV_BYTES_PER_ENTRY
        for key in ("prefill_ms", "prefill_ms_p90", "peak_mem_mb_max"):
            assert summary[f"avg_vlc/{task}/{key}"] > 0
        assert all(s["token_counts"][0]["batch_size"] in (3, 2) for s in lmms[task]["samples"])  # 8 = 3 + 3 + 2
        assert lmms[task]["efficiency"]["docs_with_token_counts"] == 8


@pytest.mark.slow
def test_lmms_eval_cli(cfg_factory, tmp_path):
    """The command a user types: ``lmms-eval --model vlc --model_args ... --include_path`` (which
    also indexes every built-in task: about 15 s more than the test above), writing lmms-eval's
    results file and per-sample log with vlc's cost on every sample."""
    from vlc.data.synthetic import ensure_synthetic

    cfg = cfg_factory(TINY_DATA, name="eval")
    synthetic = ensure_synthetic(cfg.data.root, **cfg.data.synthetic)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(TASK_UTILS.format(root=str(synthetic)))
    (tasks / "vlc_mc.yaml").write_text(MC_TASK.format(file=synthetic / "val.json"))
    lmms_eval = Path(sys.executable).with_name("lmms-eval")
    args = "ckpt_path=null,compressor=vst,compressor.window=32,compressor.ratio=4,data.num_frames=8"
    done = subprocess.run([str(lmms_eval), "--model", "vlc", "--model_args", args, "--tasks", "vlc_mc",
                           "--include_path", str(tasks), "--batch_size", "4", "--log_samples",
                           "--output_path", str(tmp_path / "out")],
                          env=_offline_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    (results,) = (tmp_path / "out").rglob("*_results.json")
    (log,) = (tmp_path / "out").rglob("*_samples_vlc_mc.jsonl")
    results = json.loads(results.read_text())
    samples = [json.loads(line) for line in log.read_text().splitlines()]
    # vst at ratio 4 over 8 frames x 16 tokens in windows of 32: 128 / 4 = 32 beacons after the 4-token prefix
    assert results["throughput"]["avg_vlc/vlc_mc/kv_tokens"] == 4 + 32
    assert len(samples) == 8 and all(s["token_counts"][0]["visual_tokens"] == 128 for s in samples)
