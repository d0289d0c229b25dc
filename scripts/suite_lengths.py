"""After the suite ablation: accuracy against video length for every variant, and the V-NIAH grid
(depth × length up to 1024 frames) for a few, from the sweep's own checkpoints.

    python scripts/suite_lengths.py logs --out docs/results/suite_ablation                 # both parts
    python scripts/suite_lengths.py logs --out DIR --frames 256 --per-task 10 --seed 0      # the length part
    python scripts/suite_lengths.py logs --out DIR --niah none_baseline,vst_ratio16 --per-cell 4

``logs`` is any folder above the ablation's job folders (``python train.py -m experiment=suite_ablation``
or its two halves); a job is found by its ``.hydra/overrides.yaml`` (``+experiment@_global_=<variant>``,
``seed=<s>``) and its ``checkpoints/last.ckpt``. Each evaluation is one ``eval.py`` process with one torch
thread (its run folder under ``--runs``, by default ``<out>/runs/``); one that finished is not run again,
so the command resumes.

Written into ``--out``:

- ``lengths.csv``: per variant, the sweep's mean val accuracy over seeds at the training length, and
  the chosen seed's accuracy at the training length and at each ``--frames`` (the same tasks on
  longer haystacks: ``data.synthetic.num_frames``; the val samples at every length draw from the same
  per-sample seeds); ``lengths.md`` the same as a table; ``accuracy_vs_frames.png`` one line per variant.
- ``niah_<variant>.csv`` / ``niah_<variant>.png`` per ``--niah`` variant (``eval.py mode=niah``),
  ``niah.md`` the mean accuracy per length of each, and ``niah_vs_frames.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VARIANT_KEY = "+experiment@_global_"
NIAH_DEFAULT = "none_baseline,pool_baseline,vst_ratio16,moviechat,qformer_global"


def find_jobs(root: Path) -> dict[tuple[str, int], Path]:
    """(variant, seed) -> job folder, for every finished job (metrics.json and last.ckpt) under root."""
    jobs: dict[tuple[str, int], Path] = {}
    def natural(path: Path) -> list:  # sweep order: job 10 after 9
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]

    for path in sorted(root.rglob(".hydra/overrides.yaml"), key=natural):
        job = path.parent.parent
        if not (job / "metrics.json").is_file() or not (job / "checkpoints" / "last.ckpt").is_file():
            continue
        pairs = dict(str(o).split("=", 1) for o in yaml.safe_load(path.read_text()) or [] if "=" in str(o))
        if VARIANT_KEY in pairs and "seed" in pairs:
            jobs[(pairs[VARIANT_KEY], int(pairs["seed"]))] = job
    return jobs


def run_eval(out: Path, overrides: list[str]) -> dict:
    """One eval.py process writing into ``out`` (skipped when its metrics.json is there)."""
    if not (out / "metrics.json").is_file():
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, str(REPO / "eval.py"), f"hydra.run.dir={out}", "threads=1", *overrides]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)}\nfailed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def lengths(jobs: dict, out: Path, frames: list[int], per_task: int, seed: int, runs: Path | None = None) -> None:
    runs = runs or out / "runs"
    variants = list(dict.fromkeys(v for v, _ in jobs))
    rows = []
    for variant in variants:
        job = jobs.get((variant, seed))
        if job is None:
            print(f"{variant}: no finished job of seed {seed}; left out", file=sys.stderr)
            continue
        trained = json.loads((job / "metrics.json").read_text())
        train_frames = int(yaml.safe_load((job / "config_resolved.yaml").read_text())["data"]["num_frames"])
        seeds = [json.loads((j / "metrics.json").read_text())["val/acc"] for (v, _), j in jobs.items() if v == variant]
        row = {"variant": variant, "compressor": trained.get("compressor", ""), "seeds": len(seeds),
               "val_acc_seeds_mean": sum(seeds) / len(seeds),
               f"acc_{train_frames}": trained["val/acc"], f"visual_tokens_{train_frames}": trained["val/visual_tokens"]}
        for n in frames:
            m = run_eval(runs / f"length_{n}" / variant, [
                f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}", "data=suite", f"data.synthetic.num_frames={n}",
                f"data.num_frames={n}", "data.synthetic.num_train=0", f"data.synthetic.num_val={per_task}",
                "data.synthetic.num_heldout=0", "data.batch_size=1"])
            row[f"acc_{n}"] = m["val/acc"]
            row[f"visual_tokens_{n}"] = m.get("val/visual_tokens")
            for key, value in m.items():
                if key.startswith("val/acc_") and key != "val/acc_task_mean":
                    row[f"{key[len('val/acc_'):]}_{n}"] = value
        rows.append(row)
        print(variant, {k: v for k, v in row.items() if k.startswith("acc_")}, flush=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "lengths.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    acc_cols = [c for c in columns if c.startswith("acc_")]
    lines = ["| variant | val acc, mean of seeds | " + " | ".join(f"seed {seed}, {c[4:]} frames" for c in acc_cols)
             + " | visual tokens at " + " / ".join(c[4:] for c in acc_cols) + " |",
             "|---|--:|" + "--:|" * len(acc_cols) + "--:|"]
    for r in rows:
        toks = " / ".join(f"{r['visual_tokens_' + c[4:]]:.0f}" for c in acc_cols)
        lines.append(f"| {r['variant']} | {r['val_acc_seeds_mean']:.3f} | "
                     + " | ".join(f"{r[c]:.3f}" for c in acc_cols) + f" | {toks} |")
    (out / "lengths.md").write_text("\n".join(lines) + "\n")
    plot_lines({r["variant"]: [(int(c[4:]), r[c]) for c in acc_cols] for r in rows}, out / "accuracy_vs_frames.png",
               f"suite, seed {seed}: mean accuracy over the six tasks (chance 0.25)")


def niah(jobs: dict, out: Path, variants: list[str], lengths_: list[int], per_cell: int, seed: int,
         runs: Path | None = None) -> None:
    curves, lines = {}, []
    runs = runs or out / "runs"
    for variant in variants:
        job = jobs.get((variant, seed))
        if job is None:
            raise SystemExit(f"--niah {variant}: no finished job of seed {seed} under the folder")
        run = runs / "niah" / variant
        run_eval(run, [f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}", "mode=niah",
                       f"niah.lengths=[{','.join(map(str, lengths_))}]", "niah.depths=[0.0,0.25,0.5,0.75,1.0]",
                       f"niah.per_cell={per_cell}"])
        shutil.copyfile(run / "niah.csv", out / f"niah_{variant}.csv")
        shutil.copyfile(run / "niah_heatmap.png", out / f"niah_{variant}.png")
        with open(run / "niah.csv") as f:
            cells = list(csv.DictReader(f))
        by_length = {}
        for c in cells:
            by_length.setdefault(int(c["length"]), []).append(float(c["accuracy"]))
        curves[variant] = [(n, sum(a) / len(a)) for n, a in sorted(by_length.items())]
        lines.append(f"| {variant} | " + " | ".join(f"{a:.3f}" for _, a in curves[variant]) + " |")
        print(variant, curves[variant], flush=True)
    head = "| variant | " + " | ".join(f"{n} frames" for n in lengths_) + " |"
    (out / "niah.md").write_text("\n".join([head, "|---|" + "--:|" * len(lengths_), *lines]) + "\n")
    plot_lines(curves, out / "niah_vs_frames.png", f"V-NIAH, seed {seed}: accuracy over 5 depths (chance 0.25)")


def plot_lines(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.axhline(0.25, color="grey", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("frames per video")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a folder above the ablation's job folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", default="256", help="comma-separated lengths for every variant ('' = none)")
    p.add_argument("--per-task", type=int, default=10, help="val samples per task at each length")
    p.add_argument("--niah", default=NIAH_DEFAULT, help="comma-separated variants for the V-NIAH grid ('' = none)")
    p.add_argument("--niah-lengths", default="64,128,256,512,1024")
    p.add_argument("--per-cell", type=int, default=4, help="V-NIAH videos per (length, depth) cell")
    p.add_argument("--seed", type=int, default=0, help="whose checkpoints to evaluate")
    p.add_argument("--runs", type=Path, default=None, help="where the eval.py run folders go (default: OUT/runs)")
    args = p.parse_args(argv)
    jobs = find_jobs(args.root)
    if not jobs:
        raise SystemExit(f"{args.root}: no finished ablation job (.hydra/overrides.yaml with {VARIANT_KEY}=…)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.niah:
        niah(jobs, args.out, args.niah.split(","), [int(n) for n in args.niah_lengths.split(",")], args.per_cell,
             args.seed, args.runs)
    if args.frames:
        lengths(jobs, args.out, [int(n) for n in args.frames.split(",")], args.per_task, args.seed, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
