"""Sweeps and their report: the table and Pareto fronts of a sweep folder (failed runs listed, not
dropped), the Hydra callback that writes them, the ablation and Optuna configs, and real multiruns."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from vlc.evaluation import report
from vlc.run import CONFIG_DIR
from vlc.sweep_callback import SweepReport

from conftest import TINY_DATA

REPO = CONFIG_DIR.parent

# variant: (compressor class, [(seed, val/acc, prefill ms)], visual tokens, kv tokens)
FAKE = {
    "none_baseline": ("Identity", [(0, 0.50, 140.0), (1, 0.60, 150.0)], 512, 516),
    "pool_baseline": ("SpatialPool", [(0, 0.47, 40.0), (1, 0.55, 50.0)], 128, 132),
    "vst_ratio16": ("VisualSummarizationTokens", [(0, 0.52, 200.0), (1, 0.52, 220.0)], 512, 36),
    "qformer_global": ("QFormer", [(0, 0.30, 30.0), (1, 0.20, 30.0)], 32, 36),
    "diffp": ("DifferentialFramePruning", [(0, 0.35, 35.0)], 60, 64),
}
KV_BYTES_PER_TOKEN = 1024


def fake_sweep(root: Path) -> Path:
    """A sweep folder as `python train.py -m experiment=ablation_smoke` leaves it: 11 jobs, one per
    (variant, seed) of FAKE, plus diffp seed 1 (failed, status.json) and moviechat seed 0 (no metrics)."""
    jobs = [(v, seed, spec) for v, spec in FAKE.items() for seed, *_ in spec[1]]
    jobs += [("diffp", 1, None), ("moviechat", 0, None)]
    for num, (variant, seed, spec) in enumerate(jobs):
        job = root / str(num)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"+experiment@_global_={variant}", f"seed={seed}", "experiment=ablation_smoke"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        target = FAKE[variant][0] if variant in FAKE else "MovieChatMemory"
        config = {"seed": seed, "compressor": {"_target_": f"vlc.compressors.{variant}.{target}"},
                  "data": {"source": "synthetic", "batch_size": 4, "num_frames": 16,
                           "synthetic": {"task": "needle", "num_train": 256, "num_val": 32}},
                  "trainer": {"max_steps": 40}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        if variant == "diffp" and seed == 1:
            (job / report.STATUS_FILE).write_text(json.dumps({"status": "FAILED", "error": "RuntimeError: boom"}))
        if spec is None:
            continue
        compressor, seeds, visual, kv = spec
        _, acc, prefill = next(s for s in seeds if s[0] == seed)
        metrics = {"val/acc": acc, "val/visual_tokens": float(visual), "val/kv_tokens": float(kv),
                   "val/kv_bytes": float(kv * KV_BYTES_PER_TOKEN), "val/prefill_ms": prefill, "val/encoder_ms": 10.0,
                   "val/context_ms": prefill + 10.0, "val/peak_mem_mb": 1000.0 + kv, "train/loss": 1.5,
                   "train_seconds": 60.0 + seed, "train_steps": 40, "compressor": compressor, "seed": seed,
                   "tags": [variant], "checkpoint": f"/somewhere/{num}/checkpoints/last.ckpt", "device": "cpu"}
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / report.STATUS_FILE).write_text(json.dumps({"status": "COMPLETED"}))
    return root


def test_collect_runs_lists_every_job_failed_ones_included(tmp_path):
    runs = report.collect_runs(fake_sweep(tmp_path / "sweep"))
    assert list(runs.run) == [str(i) for i in range(11)]  # natural order, 10 after 9
    assert list(runs.variant.unique()) == [*FAKE, "moviechat"]
    failed = runs[runs.status == "failed"]
    assert list(zip(failed.variant, failed.seed)) == [("diffp", 1), ("moviechat", 0)]
    assert failed.error.tolist()[0] == "RuntimeError: boom"
    assert "no metrics.json" in failed.error.tolist()[1]
    assert failed.compressor.tolist() == ["DifferentialFramePruning", "MovieChatMemory"]  # from the config
    assert "checkpoint" not in runs.columns  # absolute paths do not leave the machine
    assert runs.loc[runs.variant == "pool_baseline", "tags"].tolist() == ["pool_baseline"] * 2


def test_summary_pins_means_stds_and_pareto_fronts(tmp_path):
    summary = report.summarize(report.collect_runs(fake_sweep(tmp_path / "sweep"))).set_index("variant")
    assert summary.loc["none_baseline", "val/acc"] == pytest.approx(0.55)
    assert summary.loc["none_baseline", "val/acc_std"] == pytest.approx(math.sqrt(0.005))
    assert summary.loc["pool_baseline", "val/prefill_ms"] == pytest.approx(45.0)
    assert summary.loc["diffp", ["runs", "ok", "failed"]].tolist() == [2, 1, 1]
    assert math.isnan(summary.loc["diffp", "val/acc_std"])  # one ok run: no std
    assert summary.loc["moviechat", "ok"] == 0 and math.isnan(summary.loc["moviechat", "val/acc"])
    on = {short: sorted(summary.index[summary["pareto_" + short]]) for short in ("tokens", "KV", "latency")}
    # vst lets 512 tokens in and is less accurate than none: off the tokens front
    assert on["tokens"] == ["diffp", "none_baseline", "pool_baseline", "qformer_global"]
    assert on["KV"] == ["none_baseline", "vst_ratio16"]  # vst: more accurate than pool and qformer, fewer KV tokens
    assert on["latency"] == ["diffp", "none_baseline", "pool_baseline", "qformer_global"]


def test_pareto_front():
    cost = np.array([1.0, 2.0, 2.0, 3.0, 4.0, np.nan, 1.0])
    acc = np.array([0.2, 0.5, 0.4, 0.5, 0.9, 1.0, 0.2])
    # (2, .4) is beaten by (2, .5); (3, .5) by (2, .5); NaN never counts; equal points both stay
    assert report.pareto_front(cost, acc).tolist() == [True, True, False, False, True, False, True]


def test_variant_names():
    experiment = [["+experiment@_global_=pool_baseline", "seed=0", "experiment=ablation_smoke"],
                  ["+experiment@_global_=vst_ratio4", "seed=0", "experiment=ablation_smoke"]]
    assert report.variant_names(experiment, ["a", "b"]) == ["pool_baseline", "vst_ratio4"]
    grid = [["compressor=none", "seed=0"], ["compressor=pool", "seed=1"]]
    assert report.variant_names(grid, ["a", "b"]) == ["none", "pool"]  # one key varies: its value
    trials = [["optim.lr=0.000256077385703473", "compressor.stride=2"], ["optim.lr=0.001", "compressor.stride=4"]]
    assert report.variant_names(trials, ["a", "b"]) == ["lr=0.0002561,stride=2", "lr=0.001,stride=4"]
    assert report.variant_names([["experiment=stc", "trainer.max_steps=9"]], ["STCConnector"]) == ["stc"]
    assert report.variant_names([[]], ["Identity"]) == ["Identity"]
    # a sweep finished in parts: the part's experiment varies too, but names nothing the variant does not
    parts = [["+experiment@_global_=none_baseline", "seed=0", "experiment=half1"],
             ["+experiment@_global_=none_baseline", "seed=1", "experiment=half1"],
             ["+experiment@_global_=vst_ratio4", "seed=0", "experiment=rest1"],
             ["+experiment@_global_=diffp", "seed=0", "experiment=rest2"]]
    assert report.variant_names(parts, list("abcd")) == ["none_baseline", "none_baseline", "vst_ratio4", "diffp"]
    # ... unless it does: the same variant in two experiments is two variants
    both = [["+experiment@_global_=pool_baseline", "experiment=a"], ["+experiment@_global_=pool_baseline", "experiment=b"],
            ["+experiment@_global_=vst_ratio4", "experiment=a"]]
    assert report.variant_names(both, list("xyz")) == ["experiment@_global_=pool_baseline,experiment=a",
                                                       "experiment@_global_=pool_baseline,experiment=b",
                                                       "experiment@_global_=vst_ratio4,experiment=a"]


def test_vlc_report_writes_table_csv_and_plots(tmp_path, capsys):
    sweep = fake_sweep(tmp_path / "sweep")
    assert report.main([str(sweep), "--out", str(tmp_path / "out"), "--title", "fake sweep"]) == 0
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["pareto_kv_bytes.png", "pareto_prefill_ms.png", "pareto_visual_tokens.png",
                     "results.csv", "results.md"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert md.startswith("# fake sweep\n\nMade by `vlc-report sweep` (the run folders")
    assert "11 runs (9 ok, 2 failed), 6 variants, seeds 0, 1" in md
    assert ("Budget of every run: 40 steps × batch 4, 16 frames per video, "
            "synthetic needle: 256 train / 32 val videos.") in md
    assert "| none_baseline | Identity | 2/2 | 0.550 ± 0.071 | 512 ± 0 | 516 ± 0 | 516 ± 0 | 145.0 ± 7.1 |" in md
    assert "| diffp | DifferentialFramePruning | 1/2 | 0.350 | 60 | 64 | 64 | 35.0 |" in md
    assert "| moviechat | MovieChatMemory | 0/1 | – |" in md
    assert "## Failed runs" in md and "| 11 |" not in md and "| 9 | diffp | 1 | RuntimeError: boom |" in md
    assert md in capsys.readouterr().out  # the table is printed too
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("run,variant,status,seed,compressor,error,") and len(csv) == 12


def test_vlc_report_on_a_folder_without_runs(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err


def _job_config(sweep: Path, job: Path, mode: str = "MULTIRUN"):
    hydra = {"mode": mode, "sweep": {"dir": str(sweep)}, "runtime": {"output_dir": str(job)}}
    return OmegaConf.create({"hydra": hydra})


def test_callback_records_a_failed_job_and_rewrites_the_report(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep")
    job = sweep / "11"
    (job / ".hydra").mkdir(parents=True)
    overrides = ["+experiment@_global_=stc", "seed=0", "experiment=ablation_smoke"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("compressor.depth must be >= 1"))
    SweepReport().on_job_end(_job_config(sweep, job), failed)
    assert json.loads((job / "status.json").read_text()) == {
        "status": "FAILED", "error": "ValueError: compressor.depth must be >= 1"}
    md = (sweep / "results.md").read_text()
    assert "12 runs (9 ok, 3 failed)" in md and "| 11 | stc | 0 | ValueError: compressor.depth must be >= 1 |" in md
    SweepReport(out_dir=str(tmp_path / "elsewhere")).on_multirun_end(_job_config(sweep, job))
    assert (tmp_path / "elsewhere" / "pareto_kv_bytes.png").is_file()


def test_callback_does_nothing_outside_a_multirun(tmp_path):
    job = tmp_path / "run"
    job.mkdir()
    SweepReport().on_job_end(_job_config(tmp_path, job, mode="RUN"), JobReturn(status=JobStatus.COMPLETED))
    assert list(job.iterdir()) == [] and not (tmp_path / "results.md").exists()


def test_a_report_that_cannot_be_written_does_not_fail_the_sweep(tmp_path, caplog):
    SweepReport().on_multirun_end(_job_config(tmp_path / "missing", tmp_path))
    assert "could not write the report" in caplog.text


# ---------------------------------------------------------------------------------------------
# configs


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def _variants(cfg) -> list[str]:
    return [v.strip() for v in cfg.hydra.sweeper.params["+experiment@_global_"].split(",")]


def test_ablation_configs_sweep_every_variant_on_one_budget():
    full, smoke = _compose(["experiment=ablation_compressors"]), _compose(["experiment=ablation_smoke"])
    variants = _variants(full)
    assert len(variants) == len(set(variants)) == 20
    for name in variants:
        assert (CONFIG_DIR / "experiment" / f"{name}.yaml").is_file(), name
    assert _variants(smoke) == variants
    assert full.hydra.sweeper.params.seed == "0,1,2" and str(smoke.hydra.sweeper.params.seed) == "0"
    for cfg in (full, smoke):
        assert cfg.hydra.callbacks.report._target_ == "vlc.sweep_callback.SweepReport"
        assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    # Budget and warm-up are sweeper parameters (applied after every file, so no variant can change them).
    params = lambda cfg: (int(cfg.hydra.sweeper.params["trainer.max_steps"]),  # noqa: E731
                          int(cfg.hydra.sweeper.params["model.uncompressed_steps"]))
    assert params(full) == (600, 300) and params(smoke) == (300, 150)
    assert (full.data.num_frames, full.data.synthetic.num_val) == (32, 200)
    assert (smoke.data.num_frames, smoke.data.synthetic.num_val) == (16, 64)
    for name in variants:  # every variant composes with the sweep's budget and warm-up applied last
        job = _compose(["experiment=ablation_smoke", f"+experiment@_global_={name}",
                        "trainer.max_steps=300", "model.uncompressed_steps=150"])
        assert (job.trainer.max_steps, job.model.uncompressed_steps) == (300, 150), name
    assert smoke.data.synthetic.num_frames == smoke.data.num_frames  # every sampled frame is a video frame


@pytest.mark.parametrize("name,compressor,keys", [
    ("optuna", "none.Identity", ["optim.lr"]),
    ("optuna_vst", "vst.VisualSummarizationTokens", ["optim.lr", "compressor.ratio", "compressor.window"]),
    ("optuna_qformer", "qformer.QFormer", ["optim.lr", "compressor.num_queries", "compressor.depth"]),
    ("optuna_pool", "pool.SpatialPool", ["optim.lr", "compressor.stride", "compressor.mode"]),
])
def test_optuna_configs_compose(name, compressor, keys):
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    cfg = _compose([f"hparams_search={name}"])
    assert cfg.hydra.sweeper._target_ == f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}"
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/acc"
    assert list(cfg.hydra.sweeper.params) == keys
    assert cfg.compressor._target_ == f"vlc.compressors.{compressor}"
    assert cfg.hydra.callbacks.report._target_ == "vlc.sweep_callback.SweepReport"


# ---------------------------------------------------------------------------------------------
# real sweeps (subprocesses: Hydra's multirun as a user starts it)

TINY_RUN = [*TINY_DATA, "trainer.max_steps=1", "trainer.val_check_interval=1", "callbacks=none", "logger=none"]


def _train(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLC_DATA_DIR": str(tmp_path.parent / "vlc-test-data"), "VLC_LOG_DIR": str(tmp_path / "logs")}
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_multirun_with_a_failing_job_still_leaves_a_report(tmp_path):
    # `++compressor.mode=avg` is fine for pool and breaks none (Identity takes no mode): one job fails.
    sweep = tmp_path / "sweep"
    done = _train(["experiment=ablation_smoke", "+experiment@_global_=none_baseline,pool_baseline",
                   "++compressor.mode=avg", *TINY_RUN, f"hydra.sweep.dir={sweep}"], tmp_path, timeout=240)
    assert done.returncode != 0  # Hydra's basic sweeper re-raises the failed job at the end
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "FAILED"
    runs = report.collect_runs(sweep)
    assert runs[["variant", "status"]].values.tolist() == [["none_baseline", "failed"], ["pool_baseline", "ok"]]
    assert "mode" in runs.error[0]
    md = (sweep / "results.md").read_text()
    assert "2 runs (1 ok, 1 failed)" in md and "| pool_baseline | SpatialPool | 1/1 |" in md
    assert runs["val/visual_tokens"][1] == 8 * 4  # 8 frames x (4x4 patches pooled 2x2)


@pytest.mark.slow
def test_optuna_two_trials(tmp_path):
    sweep = tmp_path / "sweep"
    done = _train(["hparams_search=optuna_pool", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                   *TINY_RUN, f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optim.lr", "compressor.stride", "compressor.mode"}
    runs = report.collect_runs(sweep)
    assert len(runs) == 2 and (runs.status == "ok").all()
    assert best["best_value"] == pytest.approx(runs["val/acc"].max())


@pytest.mark.slow
def test_ablation_smoke_sweep_runs_every_variant(tmp_path):
    """The CPU smoke sweep of docs/results (docs/results/README.md has its measured time)."""
    sweep = tmp_path / "sweep"
    done = _train(["experiment=ablation_smoke", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = report.collect_runs(sweep)
    assert list(runs.variant) == _variants(_compose(["experiment=ablation_smoke"]))
    assert (runs.status == "ok").all(), runs[runs.status != "ok"][["variant", "error"]]
    assert (runs.train_steps == 16).all()
    assert (sweep / "results.md").is_file() and (sweep / "pareto_kv_bytes.png").is_file()


def test_separations_mark_differences_beyond_the_seed_spread(tmp_path):
    """none 0.50/0.60 (std 0.0707), vst 0.52/0.52 (std 0), qformer 0.30/0.20 (std 0.0707): none and vst
    against qformer differ by 0.30 and 0.27 > 2 × 0.0707; none against vst by 0.03 < 0.141, and
    pool (0.47/0.55) against none by 0.04. diffp has one ok seed: in no pair."""
    runs = report.collect_runs(fake_sweep(tmp_path / "sweep"))
    pairs = report.separations(runs)
    assert len(pairs) == 6  # 4 variants with two ok seeds: 4 choose 2
    assert "diffp" not in set(pairs.a) | set(pairs.b)
    got = {frozenset((r.a, r.b)): (round(abs(r.difference), 3), bool(r.separated)) for r in pairs.itertuples()}
    assert got[frozenset(("none_baseline", "qformer_global"))] == (0.3, True)
    assert got[frozenset(("vst_ratio16", "qformer_global"))] == (0.27, True)
    assert got[frozenset(("pool_baseline", "qformer_global"))] == (0.26, True)
    assert got[frozenset(("none_baseline", "vst_ratio16"))] == (0.03, False)
    assert got[frozenset(("none_baseline", "pool_baseline"))] == (0.04, False)
    assert sum(v[1] for v in got.values()) == 3
    text = report.write_markdown(runs, report.summarize(runs), tmp_path / "r.md", "t").read_text()
    assert "3 of 6 pairs of variants differ in accuracy by more than twice" in text
    assert "| none_baseline | qformer_global | 0.300 | 0.141 |" in text


def test_separated_pairs_say_when_their_budget_is_equal(tmp_path):
    """vst_ratio16 and qformer_global keep 36 KV entries each and differ by 0.27 (> 2 × 0.0707): a
    separation at an equal KV budget. none and pool against qformer differ in every cost."""
    runs = report.collect_runs(fake_sweep(tmp_path / "sweep"))
    summary = report.summarize(runs)
    cost = summary.set_index("variant")
    assert report.equal_budget(cost, "vst_ratio16", "qformer_global") == ["KV"]
    assert report.equal_budget(cost, "none_baseline", "vst_ratio16") == ["tokens"]
    assert report.equal_budget(cost, "none_baseline", "qformer_global") == []
    text = report.write_markdown(runs, summary, tmp_path / "r.md", "t").read_text()
    assert "1 of the 3 are at an equal visual-token or KV budget." in text
    assert text.index("### At an equal visual-token or KV budget") < text.index("| vst_ratio16 | qformer_global |") < text.index("### At different budgets") < text.index("| none_baseline | qformer_global |")
    assert "| vst_ratio16 | qformer_global | 0.270 | 0.141 | " in text and "| 512 / 32 | 36 / 36 | KV |" in text


def test_held_out_and_per_task_columns_and_a_resolved_budget(tmp_path):
    """A data=suite sweep: test/acc becomes the held-out column, val/acc_<task> and test/acc_<task> the
    per-task tables, and the budget line reads the run's resolved config (no ${...} left)."""
    root = fake_sweep(tmp_path / "sweep")
    for job in sorted(root.iterdir()):
        metrics_file = job / "metrics.json"
        if not metrics_file.is_file():
            continue
        m = json.loads(metrics_file.read_text())
        m.update({"test/acc": m["val/acc"] - 0.1, "val/acc_needle": 0.9, "val/acc_count": m["val/acc"],
                  "val/acc_task_mean": m["val/acc"], "test/acc_needle": 0.8, "test/acc_count": 0.25})
        metrics_file.write_text(json.dumps(m))
        raw = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        raw["data"]["num_frames"] = "${.synthetic.num_frames}"
        raw["data"]["synthetic"] = {"tasks": {"needle": {}, "count": {}}, "num_frames": 64, "num_train": 2000,
                                    "num_val": 50}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    runs = report.collect_runs(root)
    text = report.write_markdown(runs, report.summarize(runs), tmp_path / "r.md", "t",
                                 report._budget(root, runs)).read_text()
    assert "| variant | compressor | runs ok | accuracy | held-out | visual tokens |" in text
    assert "| none_baseline | Identity | 2/2 | 0.550 ± 0.071 | 0.450 ± 0.071 | 512 ± 0 |" in text
    assert "40 steps × batch 4, 64 frames per video, synthetic needle, count: 2000 train / 50 val videos per task" in text
    assert "## Per task, validation split (`val/acc_<task>`)" in text and "| variant | count | needle |" in text
    assert "| none_baseline | 0.550 ± 0.071 | 0.900 ± 0.000 |" in text
    assert "## Per task, held-out split (`test/acc_<task>`)" in text and "task_mean" not in text
