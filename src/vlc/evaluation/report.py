"""``vlc-report``: one table and the Pareto plots of a sweep.

    vlc-report logs/ablation/multiruns/<time>                    # writes the files into that folder
    vlc-report logs/ablation/multiruns/<time> --out docs/results
    python -m vlc.evaluation.report SWEEP_DIR

A sweep directory holds one folder per job (Hydra's ``<sweep>/<job number>/``), each with
``.hydra/overrides.yaml`` and ``.hydra/config.yaml`` and, when the job finished, ``metrics.json``.
Written into the output folder:

- ``results.csv``: one row per job, failed ones included (``status`` = ok | failed, ``error``).
- ``results.md``: per variant, mean ± std over seeds of accuracy and cost, and which Pareto fronts
  the variant is on; failed jobs listed below the table.
- ``pareto_<cost>.png`` for cost = visual_tokens, kv_bytes, prefill_ms: accuracy against the cost,
  one point per variant (error bars: std over seeds) and the Pareto front (no other variant is at
  least as accurate for at most the cost).

A job's *variant* is what its overrides change across the sweep, seed aside: the value when one key
varies (``vst_ratio4`` for ``experiment=ablation_compressors``, whose jobs differ by
``+experiment@_global_=…``; ``pool`` for ``-m compressor=none,pool``), else ``key=value`` pairs by
the keys' last part (``lr=0.0002561,ratio=4,window=160`` for an Optuna trial).
Nothing here imports torch: the command is quick and works on a copy of the run folders.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

log = logging.getLogger("vlc.report")

ACCURACY = "val/acc"
# (metrics.json key, results.md header, format, scale): the columns of the summary table.
SUMMARY_COLUMNS = (
    (ACCURACY, "accuracy", ".3f", 1.0),
    ("test/acc", "held-out", ".3f", 1.0),  # the test split (data=suite: unseen textures and shapes), when scored
    ("val/visual_tokens", "visual tokens", ".0f", 1.0),
    ("val/kv_tokens", "KV tokens", ".0f", 1.0),
    ("val/kv_bytes", "KV KiB", ".0f", 1 / 1024),
    ("val/prefill_ms", "prefill ms", ".1f", 1.0),
    ("val/peak_mem_mb", "peak MB", ".0f", 1.0),
    ("train_seconds", "train s", ".0f", 1.0),
)
# The costs accuracy is plotted against: (metrics.json key, axis label, file stem, short name).
PARETO_COSTS = (
    ("val/visual_tokens", "visual tokens entering the LLM (per video)", "pareto_visual_tokens", "tokens"),
    ("val/kv_bytes", "KV cache after prefill (bytes per video)", "pareto_kv_bytes", "KV"),
    ("val/prefill_ms", "prefill latency (ms per video)", "pareto_prefill_ms", "latency"),
)
SEED_KEYS = ("seed",)
VARIANT_KEYS = ("+experiment@_global_", "experiment", "compressor")  # named choices, when nothing varies
DROPPED = ("checkpoint",)  # absolute paths: meaningless once the table leaves the machine
STATUS_FILE = "status.json"  # written by vlc.sweep_callback.SweepReport when a job ends


# ---------------------------------------------------------------------------------------------
# reading a sweep


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Folders under ``sweep_dir`` (itself included) that are a run: Hydra's ``.hydra/`` or a metrics.json."""
    marks = [p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()]
    marks += [p.parent for p in sweep_dir.rglob("metrics.json")]
    return sorted(set(marks), key=lambda p: _natural(p.relative_to(sweep_dir).as_posix()))


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError) as e:
        log.warning("%s: unreadable (%s)", path, e)
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s)", path, e)
        return None


def _split_override(text: str) -> tuple[str, str]:
    key, _, value = str(text).partition("=")
    return key.strip(), value.strip()


def read_job(job_dir: Path) -> dict[str, Any]:
    """One job: its overrides, seed, status and metrics (flat, as metrics.json has them)."""
    overrides = [str(o) for o in (_read_yaml(job_dir / ".hydra" / "overrides.yaml") or [])]
    config = _read_yaml(job_dir / ".hydra" / "config.yaml") or {}
    metrics = _read_json(job_dir / "metrics.json")
    ended = _read_json(job_dir / STATUS_FILE) or {}
    if metrics is not None and metrics.get("fast_dev_run"):
        metrics = None  # a debug run: no evaluation happened
    failed = ended.get("status") == "FAILED" or metrics is None
    error = ended.get("error") or ("" if metrics is not None else
                                   "no metrics.json (the job crashed, was killed, or is running)")
    row: dict[str, Any] = {
        "status": "failed" if failed else "ok",
        "error": error if failed else "",
        "seed": (metrics or {}).get("seed", config.get("seed", _seed_override(overrides))),
        "overrides": " ".join(overrides),
        "_overrides": overrides,  # the list itself: an override may hold spaces
    }
    for key, value in (metrics or {}).items():
        if key in DROPPED or key in row:
            continue
        row[key] = " ".join(map(str, value)) if isinstance(value, list) else value
    if "compressor" not in row:
        target = (config.get("compressor") or {}).get("_target_", "")
        row["compressor"] = target.rsplit(".", 1)[-1] if target else ""
    return row


def _seed_override(overrides: list[str]) -> int | None:
    seeds = [value for key, value in map(_split_override, overrides) if key in SEED_KEYS]
    return int(seeds[-1]) if seeds and seeds[-1].lstrip("-").isdigit() else None


def variant_names(overrides: list[list[str]], fallback: list[str]) -> list[str]:
    """The name of each job's variant: the overrides that differ between jobs, seed aside."""
    parsed = [dict(_split_override(o) for o in job) for job in overrides]
    keys = list(dict.fromkeys(k for job in parsed for k in job))
    varying = [k for k in keys if k not in SEED_KEYS and len({job.get(k) for job in parsed}) > 1]
    # A sweep finished in parts (`-m experiment=part2 '+experiment@_global_=…'`) also varies the top
    # experiment; when the named variant already tells the jobs apart, that choice names nothing.
    def groups(ks: list[str]) -> int:  # how many distinct jobs these keys tell apart
        return len({tuple(job.get(k) for k in ks) for job in parsed})

    for key in VARIANT_KEYS[1:]:
        rest = [k for k in varying if k != key]
        if key in varying and VARIANT_KEYS[0] in rest and groups(rest) == groups(varying):
            varying = rest
    # Keys by their last part (optim.lr -> lr) unless two varying keys share it.
    tails = [k.rsplit(".", 1)[-1].lstrip("+~") for k in varying]
    labels = tails if len(set(tails)) == len(tails) else varying
    names = []
    for job, default in zip(parsed, fallback):
        if len(varying) == 1:
            names.append(job.get(varying[0]) or default)
        elif varying:
            pairs = [f"{label}={_short(job[k])}" for k, label in zip(varying, labels) if k in job]
            names.append(",".join(pairs) or default)
        else:  # one job, or jobs that differ only by seed: the experiment or compressor chosen, if any
            named = [job[k] for k in VARIANT_KEYS if k in job]
            names.append(named[-1] if named else default)
    return names


def _short(value: str) -> str:
    """A float override as 4 significant digits (Optuna's learning rates), anything else as is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "e" not in value.lower() else format(number, ".4g")


def collect_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job of ``sweep_dir``: run (its folder, relative), variant, status, error, seed,
    compressor, overrides and every metrics.json value. Raises FileNotFoundError if there is none."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"vlc-report: {sweep_dir} is not a folder")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(
            f"vlc-report: no runs under {sweep_dir} (expected job folders with .hydra/ or metrics.json)")
    rows = []
    for job in jobs:
        rel = job.relative_to(sweep_dir).as_posix()
        rows.append({"run": rel if rel != "." else job.name, **read_job(job)})
    overrides = [r.pop("_overrides") for r in rows]
    fallback = [r.get("compressor") or r["run"] for r in rows]
    for row, name in zip(rows, variant_names(overrides, fallback)):
        row["variant"] = name
    df = pd.DataFrame(rows)
    first = ["run", "variant", "status", "seed", "compressor", "error"]
    rest = sorted(c for c in df.columns if c not in first and c != "overrides")
    return df[first + rest + ["overrides"]]


# ---------------------------------------------------------------------------------------------
# aggregating


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant (in sweep order): runs, ok, failed, and ``<key>`` / ``<key>_std`` over its ok runs
    for every numeric metric; ``pareto_<short>`` = on the front of accuracy against that cost."""
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        ok = group[group["status"] == "ok"]
        row: dict[str, Any] = {
            "variant": variant,
            "compressor": next((c for c in group["compressor"] if isinstance(c, str) and c), ""),
            "runs": len(group), "ok": len(ok), "failed": len(group) - len(ok),
            "seeds": " ".join(str(s) for s in group["seed"].tolist() if s is not None and s == s),
        }
        for col in runs.columns:
            if col in ("seed", "run") or not pd.api.types.is_numeric_dtype(runs[col]):
                continue
            values = pd.to_numeric(ok[col], errors="coerce").dropna()
            row[col] = float(values.mean()) if len(values) else math.nan
            row[col + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    for key, _, _, short in PARETO_COSTS:
        if key in summary and ACCURACY in summary:
            summary["pareto_" + short] = pareto_front(summary[key].to_numpy(float), summary[ACCURACY].to_numpy(float))
    return summary


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """(n,) bool: points no other point dominates (accuracy ≥ and cost ≤, one of them strictly).
    Points with a NaN are never on the front."""
    cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
    valid = ~(np.isnan(cost) | np.isnan(accuracy))
    on_front = valid.copy()
    for i in np.flatnonzero(valid):
        others = valid & (cost <= cost[i]) & (accuracy >= accuracy[i]) & ((cost < cost[i]) | (accuracy > accuracy[i]))
        on_front[i] = not others.any()
    return on_front


def separations(runs: pd.DataFrame, metric: str = ACCURACY) -> pd.DataFrame:
    """Every pair of variants with at least two ok seeds each: the difference of their mean
    ``metric``, ``separated`` when it exceeds twice the larger of their seed standard deviations,
    and Welch's two-sided t-test p-value (unequal variances) — so a table says which differences
    the seed spread supports instead of leaving the reader to eyeball them. Sorted by |difference|."""
    from scipy import stats

    ok = runs[runs["status"] == "ok"]
    values = {v: pd.to_numeric(g[metric], errors="coerce").dropna().to_numpy(float)
              for v, g in ok.groupby("variant", sort=False) if metric in g}
    names = [v for v, x in values.items() if len(x) >= 2]
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            xa, xb = values[a], values[b]
            diff = float(xa.mean() - xb.mean())
            spread = max(float(xa.std(ddof=1)), float(xb.std(ddof=1)))
            if np.allclose(xa, xa[0]) and np.allclose(xb, xb[0]):  # no spread at all: the test is undefined
                p = 0.0 if not math.isclose(xa[0], xb[0]) else 1.0
            else:
                p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
            rows.append(dict(a=a, b=b, difference=diff, spread=spread, separated=abs(diff) > 2 * spread, p=p,
                             n_a=len(xa), n_b=len(xb)))
    out = pd.DataFrame(rows, columns=["a", "b", "difference", "spread", "separated", "p", "n_a", "n_b"])
    return out.reindex(out["difference"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def separation_table(pairs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The separated pairs of ``pairs``, the better variant first, with both sides' visual tokens and
    KV KiB and which of the two they share."""
    cost = summary.set_index("variant")
    lines = ["| better | worse | Δ accuracy | 2 × larger std | Welch p | visual tokens | KV KiB | equal budget |",
             "|---|---|--:|--:|--:|--:|--:|---|"]
    for _, r in pairs[pairs["separated"]].iterrows():
        better, worse = (r["a"], r["b"]) if r["difference"] > 0 else (r["b"], r["a"])
        tokens = " / ".join(_cell(cost.loc[v].get("val/visual_tokens", math.nan), math.nan, ".0f", 1.0)
                            for v in (better, worse))
        kv = " / ".join(_cell(cost.loc[v].get("val/kv_bytes", math.nan), math.nan, ".0f", 1 / 1024)
                        for v in (better, worse))
        lines.append(f"| {better} | {worse} | {abs(r['difference']):.3f} | {2 * r['spread']:.3f} | "
                     f"{r['p']:.3g} | {tokens} | {kv} | {', '.join(equal_budget(cost, better, worse))} |")
    return "\n".join(lines)


def equal_budget(cost: pd.DataFrame, a: str, b: str) -> list[str]:
    """Which costs two variants share exactly (``tokens``: visual tokens, ``KV``: KV bytes per video),
    so that their accuracy difference is one at an equal budget."""
    same = []
    for key, short in (("val/visual_tokens", "tokens"), ("val/kv_bytes", "KV")):
        x, y = cost.loc[a].get(key, math.nan), cost.loc[b].get(key, math.nan)
        if x == x and y == y and math.isclose(x, y):
            same.append(short)
    return same


# ---------------------------------------------------------------------------------------------
# writing


def _cell(mean: float, std: float, fmt: str, scale: float) -> str:
    if mean != mean:  # NaN: no ok run had it
        return "–"
    text = format(mean * scale, fmt)
    return text if std != std else f"{text} ± {format(std * scale, fmt)}"


def _job_config(job_dir: Path) -> dict[str, Any]:
    """A job's config with its values resolved: the run's ``config_resolved.yaml`` when it wrote one,
    else Hydra's ``.hydra/config.yaml`` with its ``data`` node resolved where that needs no Hydra."""
    resolved = _read_yaml(job_dir / "config_resolved.yaml")
    if resolved:
        return resolved
    cfg = _read_yaml(job_dir / ".hydra" / "config.yaml") or {}
    if isinstance(cfg.get("data"), dict):
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException
        try:  # relative interpolations such as num_frames: ${.synthetic.num_frames}
            cfg["data"] = OmegaConf.to_container(OmegaConf.create({"data": cfg["data"]}), resolve=True)["data"]
        except OmegaConfBaseException as e:  # an interpolation into the rest of the config: keep the raw text
            log.debug("%s: data config left unresolved (%s)", job_dir, e)
    return cfg


def _budget(sweep_dir: Path, runs: pd.DataFrame) -> str:
    """The shared budget, read from the first job's composed config."""
    for run in runs["run"]:
        cfg = _job_config(sweep_dir / run)
        if not cfg:
            continue
        data, trainer = cfg.get("data") or {}, cfg.get("trainer") or {}
        synth = data.get("synthetic") or {}
        parts = [f"{trainer.get('max_steps')} steps × batch {data.get('batch_size')}",
                 f"{data.get('num_frames')} frames per video"]
        if data.get("source") == "synthetic" and synth:
            tasks = synth.get("tasks")
            what = ", ".join(tasks) if isinstance(tasks, (dict, list)) and tasks else synth.get("task")
            per = " per task" if isinstance(tasks, (dict, list)) and tasks else ""
            parts.append(f"synthetic {what}: {synth.get('num_train')} train / {synth.get('num_val')} val videos{per}")
        return ", ".join(parts)
    return ""


def markdown_table(summary: pd.DataFrame) -> str:
    fronts = [short for _, _, _, short in PARETO_COSTS if "pareto_" + short in summary]
    header = ["variant", "compressor", "runs ok", *[h for k, h, _, _ in SUMMARY_COLUMNS if k in summary], "Pareto"]
    align = ["---"] * 3 + ["--:"] * (len(header) - 4) + ["---"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for _, row in summary.iterrows():
        cells = [str(row["variant"]), str(row["compressor"]), f"{row['ok']}/{row['runs']}"]
        for key, _, fmt, scale in SUMMARY_COLUMNS:
            if key in summary:
                cells.append(_cell(row[key], row.get(key + "_std", math.nan), fmt, scale))
        cells.append(", ".join(s for s in fronts if bool(row["pareto_" + s])) or "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_task_tables(summary: pd.DataFrame) -> list[str]:
    """Markdown lines: per variant, mean ± std of ``<split>/acc_<task>`` for each split that has them
    (a multi-task data set such as data=suite), so a reader sees which task a compressor loses."""
    lines: list[str] = []
    for split, name in (("val", "validation"), ("test", "held-out")):
        prefix = f"{split}/acc_"
        tasks = [c[len(prefix):] for c in summary.columns
                 if c.startswith(prefix) and not c.endswith("_std") and c != prefix + "task_mean"]
        if len(tasks) < 2:
            continue
        lines += ["", f"## Per task, {name} split (`{prefix}<task>`)", "",
                  "| variant | " + " | ".join(tasks) + " |", "|---|" + "--:|" * len(tasks)]
        for _, row in summary.iterrows():
            cells = [_cell(row[prefix + t], row.get(prefix + t + "_std", math.nan), ".3f", 1.0) for t in tasks]
            lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(runs: pd.DataFrame, summary: pd.DataFrame, path: Path, title: str, budget: str = "",
                   source: str = "") -> Path:
    """results.md; ``source``: the sweep folder it was made from, named in its first lines."""
    seeds = sorted({int(s) for s in runs["seed"].dropna()})
    n_ok = int((runs["status"] == "ok").sum())
    lines = [f"# {title}", ""]
    if source:
        lines += [f"Made by `vlc-report {source}` (the run folders' commands: their `.hydra/overrides.yaml`, "
                  "listed in results.csv).", ""]
    lines.append(f"{len(runs)} runs ({n_ok} ok, {len(runs) - n_ok} failed), {len(summary)} variants, "
                 f"seeds {', '.join(map(str, seeds)) or '–'}. "
                 "Mean ± std over the seeds' ok runs (no ± with one run).")
    if budget:
        lines.append(f"Budget of every run: {budget}.")
    if "train_steps" in runs:
        ok_steps = pd.to_numeric(runs.loc[runs["status"] == "ok", "train_steps"], errors="coerce")
        steps = sorted(set(ok_steps.dropna().astype(int)))
        if len(steps) > 1:
            lines.append(f"**Warning: the runs trained for different numbers of steps ({steps}); not one budget.**")
    lines += ["", "Accuracy: `val/acc` (4-way multiple choice, chance 0.25 on the synthetic tasks); held-out: "
              "`test/acc`, the test split where the runs scored one (data=suite: textures and shapes training "
              "never saw). Cost per "
              "validation video: visual tokens entering the LLM, KV-cache tokens and KiB after prefill, "
              "prefill latency, peak memory (process high-water mark on CPU). Pareto: the fronts "
              "(accuracy against tokens / KV bytes / prefill latency) the variant is on.", ""]
    lines.append(markdown_table(summary))
    pairs = separations(runs)
    if len(pairs):
        n = int(pairs["separated"].sum())
        lines += ["", "## Differences the seed spread supports", "",
                  f"{n} of {len(pairs)} pairs of variants differ in accuracy by more than twice the larger of "
                  f"their seed standard deviations (Welch's two-sided t-test p beside it); the others are within "
                  f"the seeds' noise. Costs: the better / the worse variant.", ""]
        if n:
            cost = summary.set_index("variant")
            equal = pairs.apply(lambda r: bool(equal_budget(cost, r["a"], r["b"])), axis=1).astype(bool)
            at_equal = int((equal & pairs["separated"]).sum())
            lines[-2] += f" {at_equal} of the {n} are at an equal visual-token or KV budget."
            if at_equal:
                lines += ["### At an equal visual-token or KV budget", "", separation_table(pairs[equal], summary), ""]
            if n - at_equal:
                lines += ["### At different budgets", "", separation_table(pairs[~equal], summary)]
    lines += per_task_tables(summary)
    failed = runs[runs["status"] != "ok"]
    if len(failed):
        lines += ["", "## Failed runs", "", "| run | variant | seed | error |", "|---|---|---|---|"]
        for _, r in failed.iterrows():
            error = str(r["error"]).replace("|", "\\|").replace("\n", " ")[:300]
            seed = "–" if pd.isna(r["seed"]) else int(r["seed"])
            lines.append(f"| {r['run']} | {r['variant']} | {seed} | {error} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_pareto(ax: Any, summary: pd.DataFrame, cost_key: str, label: str) -> None:
    """Accuracy against ``cost_key`` on ``ax``: one point per variant (std error bars), front in red."""
    data = summary[[c for c in ("variant", ACCURACY, cost_key, ACCURACY + "_std", cost_key + "_std") if c in summary]]
    data = data.dropna(subset=[ACCURACY, cost_key])
    if data.empty:
        ax.text(0.5, 0.5, f"no run has {cost_key}", ha="center", va="center", transform=ax.transAxes)
        return
    x, y = data[cost_key].to_numpy(float), data[ACCURACY].to_numpy(float)
    front = pareto_front(x, y)
    ax.errorbar(x, y, xerr=data.get(cost_key + "_std"), yerr=data.get(ACCURACY + "_std"), fmt="o", color="tab:blue",
                ecolor="lightgray", elinewidth=1, capsize=2, markersize=5, label="variant (mean over seeds)")
    order = np.argsort(x[front])
    fx, fy = x[front][order], y[front][order]
    ax.plot(fx, fy, "o", color="tab:red", markersize=7, label="Pareto-optimal")
    ax.step(fx, fy, where="post", color="tab:red", linewidth=1.2, alpha=0.8)
    labels: dict[tuple[float, float], list[str]] = {}  # variants on the same point share one label
    for xi, yi, name in zip(x, y, data["variant"]):
        labels.setdefault((xi, yi), []).append(str(name))
    for (xi, yi), names in labels.items():
        ax.annotate("\n".join(names), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7, va="bottom")
    # Head room for the tallest stack of names above the top points, so it stays under the title.
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + (hi - lo) * 0.055 * max(len(n) for n in labels.values()))
    if x.min() > 0 and x.max() / x.min() > 8:  # costs spread over an order of magnitude
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (val/acc)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def write_pareto_plots(summary: pd.DataFrame, out_dir: Path, title: str = "") -> list[Path]:
    from matplotlib.figure import Figure  # no pyplot: no display needed

    paths = []
    for key, label, stem, _ in PARETO_COSTS:
        if key not in summary:
            continue
        fig = Figure(figsize=(7, 4.8))
        ax = fig.add_subplot()
        plot_pareto(ax, summary, key, label)
        ax.set_title(f"{title}: accuracy vs {label.split(' (')[0]}" if title else f"accuracy vs {label}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None, title: str | None = None) -> dict[str, Path]:
    """Read ``sweep_dir``'s jobs and write results.csv, results.md and pareto_*.png into ``out_dir``
    (default: ``sweep_dir``). Returns the paths written, by name."""
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(sweep_dir)
    summary = summarize(runs)
    title = title or f"Sweep {sweep_dir.resolve().name}"
    written = {"results.csv": out_dir / "results.csv"}
    runs.to_csv(written["results.csv"], index=False, float_format="%.6g")
    written["results.md"] = write_markdown(runs, summary, out_dir / "results.md", title, _budget(sweep_dir, runs),
                                           source=sweep_dir.name)
    for path in write_pareto_plots(summary, out_dir, title):
        written[path.name] = path
    return written


# ---------------------------------------------------------------------------------------------
# the command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vlc-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", type=Path, help="a sweep folder (logs/<task>/multiruns/<time>) or any folder of runs")
    p.add_argument("--out", type=Path, default=None, help="where to write the files (default: SWEEP_DIR)")
    p.add_argument("--title", default=None, help="heading of results.md and the plots (default: Sweep <folder name>)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        written = write_report(args.sweep_dir, args.out, args.title)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    print(written["results.md"].read_text())
    for name, path in written.items():
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
