"""``vlc-bench``: memory and latency of each compressor against the number of frames.

    vlc-bench                                             # every compressor, tiny model, CPU
    vlc-bench compressor=none compressor=vst compressor=vst compressor.ratio=4 model.encoder.img_size=64 \
        --frames 64,256,1024
    vlc-bench model=videoxl_7b_random compressor=none,pool,vst --device cuda --max-frames
    python -m vlc.evaluation.bench --help

The positional arguments are Hydra overrides, as ``train.py`` and ``eval.py`` take them; each
``compressor=NAME`` starts a variant and the ``compressor.KEY=VALUE`` after it belong to it (see
``variants``). Each measurement is one sample in eval mode under no_grad, built from the real
configs (``configs/eval.yaml`` with the overrides, random init) and measured the way
``VideoPipeline.evaluate`` measures every compressor (``measure_context``): visual tokens entering
the LLM, KV tokens and bytes after prefill, encoder and prefill time, peak memory. By default the
frames come from a generated mp4 of exactly N frames, decoded like evaluation decodes (decoding is
timed and inside the memory window). Memory: CUDA ``max_memory_allocated``; CPU the process
high-water mark (VmHWM), reset just before the sample and reported both as is and minus the
resident set just before (the baseline: weights, libraries, the Python process).

``--max-frames`` grows N ×2 from the first ``--frames`` value until a measurement runs out of memory
(CUDA OOM; on CPU, a high-water mark over ``--mem-limit-gb``), then bisects to the first N that does.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import logging
import math
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("vlc.bench")

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_EXTRA = ("vst:ratio=4",)  # Video-XL's other published ratio, beside the config's default 16
EXCLUDED = ("chain",)  # a composition of the others, not a method of its own
QUESTION = "What color is the shape that appears briefly in the video?"
CANDIDATES = ["red", "green", "blue", "yellow"]
COLUMNS = (
    "model", "compressor", "frames", "status", "visual_tokens", "kv_tokens", "kv_bytes", "decode_ms", "encoder_ms",
    "prefill_ms", "context_ms", "base_mem_mb", "peak_mem_mb", "peak_delta_mb", "repeats", "device",
)
NUMERIC = ("visual_tokens", "kv_tokens", "kv_bytes", "decode_ms", "encoder_ms", "prefill_ms", "context_ms",
           "base_mem_mb", "peak_mem_mb", "peak_delta_mb")
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")


class OutOfMemory(Exception):
    """A measurement that did not fit: a real OOM, or over the soft limit."""


# ---------------------------------------------------------------------------------------------
# what to run


def default_compressors(config_dir: Path) -> list[str]:
    """Every config in configs/compressor/ but the chain, plus vst at ratio 4."""
    names = sorted(p.stem for p in (config_dir / "compressor").glob("*.yaml") if p.stem not in EXCLUDED)
    return names + [c for c in DEFAULT_EXTRA if c.split(":")[0] in names]


def variants(overrides: list[str], config_dir: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Hydra overrides → (the variants to measure, the overrides every variant shares).

    Each ``compressor=NAME`` starts a variant (``compressor=none,pool,vst``: one per name), and the
    ``compressor.KEY=VALUE`` overrides after it belong to it; every other override (``model=…``,
    ``model.encoder.img_size=64``) applies to all. A variant is labelled ``vst:ratio=4`` in the
    tables. No ``compressor=``: every compressor config but the chain, plus vst at ratio 4.
    """
    shared: list[str] = []
    groups: list[tuple[list[str], list[str]]] = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "compressor":
            groups.append(([v.strip() for v in value.split(",") if v.strip()], []))
        elif key.startswith("compressor.") and groups:
            groups[-1][1].append(item)
        elif key.startswith("compressor."):
            raise ValueError(f"{item}: give compressor=NAME before its settings")
        else:
            shared.append(item)
    if not groups:
        groups = [([name], [f"compressor.{kv}" for kv in params.split(",") if kv])
                  for name, _, params in (spec.partition(":") for spec in default_compressors(config_dir))]
    out = []
    for names, settings in groups:
        for name in names:
            label = name + (":" + ",".join(o.split(".", 1)[1] for o in settings) if settings else "")
            out.append((label, [f"compressor={name}", *settings]))
    return out, shared


def parse_frames(text: str) -> list[int]:
    frames = sorted({int(x) for x in text.split(",") if x.strip()})
    if not frames or frames[0] < 1:
        raise ValueError(f"--frames {text!r}: expected positive integers, e.g. 16,32,64")
    return frames


def compose(overrides: list[str], config_dir: Path):
    """configs/eval.yaml with ``overrides``, for a model without a checkpoint (random init)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hydra_compose("eval", overrides=["ckpt_path=null", *overrides])


def build(cfg) -> Any:
    from omegaconf import OmegaConf, open_dict

    from vlc.run import build_model

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.prompt = {k: v for k, v in OmegaConf.to_container(cfg.prompt).items() if v is not None}
    return build_model(cfg)


# ---------------------------------------------------------------------------------------------
# inputs


def haystack_video(folder: Path, frames: int, size: int, fps: float = 4.0) -> Path:
    """An N-frame needle video (the synthetic benchmark's generator), made once and cached."""
    from vlc.data.synthetic import make_needle_frames, sample_rng, write_mp4

    path = folder / f"haystack-{frames}f-{size}px.mp4"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        pixels, _ = make_needle_frames(frames, 0.5, "red", size, sample_rng(0, "bench", frames, size))
        tmp = path.with_suffix(".tmp.mp4")
        write_mp4(tmp, pixels, fps)
        tmp.replace(path)
    return path


def load_sample(frames: int, size: int, video: Path | None, backend: str = "decord", lazy: bool = False) -> dict:
    """One sample as evaluation batches it: decoded from ``video`` (all N frames) or random pixels.

    ``lazy``: nothing is decoded yet; the batch's pixels are a ``LazyFrames`` that the model
    decodes when it encodes them (a window at a time on the streaming path).
    """
    from vlc.data.annotations import Sample
    from vlc.data.datamodule import VideoQADataset, collate_video_qa

    if video is not None:
        sample = Sample(id=f"bench-{frames}", video=str(video), question=QUESTION, answer="red", candidates=CANDIDATES)
        dataset = VideoQADataset([sample], num_frames=frames, backend=backend, frame_size=size, lazy=lazy)
        return collate_video_qa([dataset[0]])
    g = torch.Generator().manual_seed(frames)
    pixels = torch.randint(0, 256, (frames, 3, size, size), dtype=torch.uint8, generator=g)
    item = dict(id=f"bench-{frames}", frames=pixels,
                times=torch.arange(frames, dtype=torch.float32) / 4, question=QUESTION, answer="red",
                candidates=CANDIDATES, task="bench", meta={})
    return collate_video_qa([item])


# ---------------------------------------------------------------------------------------------
# one measurement


def is_oom(error: BaseException) -> bool:
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MESSAGES)


def measure(model: Any, frames: int, size: int, video: Path | None, device: torch.device, backend: str = "decord",
            precision: str = "32-true", mem_limit_mb: float | None = None, lazy: bool = False) -> dict[str, Any]:
    """Decode + context of one sample: its tokens, times and peak memory (decode included).

    ``lazy`` (with a video): frames are decoded where the model asks for them, inside
    ``encoder ms``; ``decode ms`` is then the decoding time wherever it fell.
    """
    from vlc.evaluation.efficiency import (
        autocast,
        current_memory_mb,
        measure_context,
        peak_memory_mb,
        release_memory,
        reset_peak_memory,
        to_device,
    )

    release_memory(device)
    base = current_memory_mb(device)
    reset_peak_memory(device)
    ctx = batch = None
    try:
        start = time.perf_counter()
        batch = to_device(load_sample(frames, size, video, backend, lazy=lazy and video is not None), device)
        decode_ms = 1000 * (time.perf_counter() - start)
        decode_peak = peak_memory_mb(device)
        with torch.no_grad(), autocast(device, precision):
            ctx, cost = measure_context(model.pipeline, batch)
        decode_ms += 1000 * getattr(batch["pixels"], "decode_seconds", 0.0)
    except Exception as error:  # noqa: BLE001 - only out-of-memory errors are expected here
        if is_oom(error):
            raise OutOfMemory(f"{frames} frames: {str(error).splitlines()[0][:200]}") from None
        raise
    finally:
        del ctx, batch
        release_memory(device)
    peak = max(decode_peak, cost["peak_mem_mb"])
    row = dict(
        frames=frames, visual_tokens=int(cost["visual_tokens"][0]), kv_tokens=int(cost["kv_tokens"][0]),
        kv_bytes=int(cost["kv_bytes"][0]), decode_ms=decode_ms if video is not None else 0.0,
        encoder_ms=cost["encoder_ms"], prefill_ms=cost["prefill_ms"], context_ms=cost["context_ms"],
        base_mem_mb=base, peak_mem_mb=peak, peak_delta_mb=peak - base,
    )
    if mem_limit_mb is not None and peak > mem_limit_mb:
        raise OutOfMemory(f"{frames} frames: peak {peak:.0f} MiB over the {mem_limit_mb:.0f} MiB limit")
    return row


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key in NUMERIC:
        out[key] = statistics.median(r[key] for r in rows)
    out["repeats"] = len(rows)
    return out


# ---------------------------------------------------------------------------------------------
# the largest frame count that fits


def find_max_frames(fits: Callable[[int], bool], start: int, cap: int | None = None) -> tuple[int, int | None]:
    """Grow N ×2 from ``start`` while ``fits(N)``, then bisect between the last N that fitted and the
    first that did not. Returns ``(largest N that fits (0: none), smallest N that does not (None:
    everything up to ``cap`` fitted))``; assumes fitting is monotone in N."""
    if start < 1:
        raise ValueError(f"find_max_frames: start={start}, expected >= 1")
    lo, hi, n = 0, None, start
    while True:
        if cap is not None and n > cap:
            n = cap
        if fits(n):
            lo = n
            if n == cap:
                return lo, None
            n *= 2
        else:
            hi = n
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


@contextlib.contextmanager
def cpu_data_limit(mem_limit_mb: float | None):
    """A hard stop well past the soft limit while the search runs: on CPU an allocation beyond
    twice the limit fails (and is reported as out of memory) instead of pushing a shared machine
    into the OOM killer. The previous limit is restored afterwards."""
    from vlc.evaluation.efficiency import _read_status_kb

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    allowed = _read_status_kb("VmData") * 1024 + int(2 * (mem_limit_mb or 0) * 2**20)
    active = mem_limit_mb is not None and (hard == resource.RLIM_INFINITY or allowed < hard)
    if active:
        resource.setrlimit(resource.RLIMIT_DATA, (allowed, hard))
    try:
        yield
    finally:
        if active:
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


# ---------------------------------------------------------------------------------------------
# output


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
    return path


def _num(value: Any, digits: int = 0) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| compressor | frames | visual tokens | KV tokens | KV MiB | decode ms | encoder ms | prefill ms "
            "| peak MiB | peak − baseline MiB | device |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if r.get("status", "ok") != "ok":
            lines.append(f"| {r['compressor']} | {r['frames']} | {r['status']} |  |  |  |  |  |  |  | {r['device']} |")
            continue
        lines.append(
            f"| {r['compressor']} | {r['frames']} | {_num(r['visual_tokens'])} | {_num(r['kv_tokens'])} "
            f"| {_num(r['kv_bytes'] / 2**20, 2)} | {_num(r['decode_ms'])} | {_num(r['encoder_ms'])} "
            f"| {_num(r['prefill_ms'])} | {_num(r['peak_mem_mb'])} | {_num(r['peak_delta_mb'])} | {r['device']} |"
        )
    return "\n".join(lines)


def max_frames_table(results: list[dict[str, Any]]) -> str:
    lines = ["| compressor | most frames that fit | first frames that do not | peak MiB at the most | limit | device |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['compressor']} | {_num(r['max_frames'])} | {_num(r['first_oom'])} "
                     f"| {_num(r['peak_mem_mb'])} | {r['limit']} | {r['device']} |")
    return "\n".join(lines)


def scaling(rows: list[dict[str, Any]], reference: str = "none") -> list[dict[str, Any]]:
    """Each compressor against ``reference`` at the largest frame count both ran: peak memory over
    the baseline, and its growth per added frame between the two largest such counts."""
    ok: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok":
            ok.setdefault(r["compressor"], {})[r["frames"]] = r
    if reference not in ok:
        return []
    out = []
    for name, by_frames in ok.items():
        if name == reference:
            continue
        common = sorted(set(by_frames) & set(ok[reference]))
        if len(common) < 2:
            continue
        lo, hi = common[-2], common[-1]

        def slope(table: dict[int, dict]) -> float:
            return (table[hi]["peak_delta_mb"] - table[lo]["peak_delta_mb"]) / (hi - lo)

        ref_peak, peak = ok[reference][hi]["peak_delta_mb"], by_frames[hi]["peak_delta_mb"]
        ref_slope, own_slope = slope(ok[reference]), slope(by_frames)
        out.append(dict(compressor=name, reference=reference, frames=hi, from_frames=lo, peak_delta_mb=peak,
                        reference_peak_delta_mb=ref_peak, peak_ratio=peak / ref_peak if ref_peak > 0 else math.nan,
                        slope_mb_per_frame=own_slope, reference_slope_mb_per_frame=ref_slope,
                        slope_ratio=own_slope / ref_slope if ref_slope > 0 else math.nan))
    return out


def scaling_table(results: list[dict[str, Any]]) -> str:
    lines = ["| compressor | at frames | peak − baseline MiB | ÷ reference's | MiB per added frame "
             "(between the two largest) | ÷ reference's |", "|---|---|---|---|---|---|"]
    for r in results:
        peak = f"{_num(r['peak_delta_mb'])} vs {_num(r['reference_peak_delta_mb'])}"
        slope = (f"{_num(r['slope_mb_per_frame'], 4)} vs {_num(r['reference_slope_mb_per_frame'], 4)} "
                 f"({r['from_frames']}→{r['frames']})")
        lines.append(f"| {r['compressor']} vs {r['reference']} | {r['frames']} | {peak} | {_num(r['peak_ratio'], 3)} "
                     f"| {slope} | {_num(r['slope_ratio'], 3)} |")
    return "\n".join(lines)


def update_docs(path: Path, name: str, body: str) -> Path:
    """Replace the block between ``<!-- vlc-bench:NAME -->`` and ``<!-- /vlc-bench:NAME -->`` in
    ``path`` with ``body`` (appending a new section with the markers if there is none)."""
    begin, end = f"<!-- vlc-bench:{name} -->", f"<!-- /vlc-bench:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## vlc-bench: {name}\n\n{block}\n"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# the command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vlc-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides, as train.py and eval.py take them: compressor=NAME starts a variant "
                        "(compressor=none,pool: one each) and the compressor.KEY=VALUE after it set it; the rest "
                        "(model=videoxl_7b_random, model.encoder.img_size=64) apply to every variant "
                        "(default: every compressor config but chain, plus vst at ratio 4, on model=tiny)")
    p.add_argument("--frames", default="16,64,256", help="frame counts (default 16,64,256)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--from-video", dest="from_video", action="store_true", default=True,
                   help="decode a generated mp4 of N frames, decoding included (default)")
    p.add_argument("--no-from-video", dest="from_video", action="store_false", help="random pixels, no decoding")
    p.add_argument("--decode", choices=("lazy", "eager"), default="lazy",
                   help="lazy (default): frames are decoded when the model encodes them, so streaming vst holds "
                        "one window of pixels; eager: every frame is decoded before the model runs")
    p.add_argument("--frame-size", type=int, default=None, help="video side in px (default: the encoder's img_size)")
    p.add_argument("--precision", default=None,
                   help="32-true | bf16-mixed (default: 32-true on cpu, bf16-mixed on cuda)")
    p.add_argument("--repeats", type=int, default=1, help="measure each point this many times; report the median")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up sample")
    p.add_argument("--max-frames", action="store_true", help="find each compressor's largest frame count")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="soft memory limit (process high-water mark on CPU; default 4 on cpu, none on cuda)")
    p.add_argument("--frames-cap", type=int, default=8192, help="--max-frames stops growing here (default 8192)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on cpu: stable, comparable timings on a shared machine; "
                        "torch's default on cuda)")
    p.add_argument("--cache", type=Path, default=None,
                   help="where generated videos are kept (default <data_dir>/bench)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default logs/bench/<time>)")
    p.add_argument("--update-docs", nargs="?", const=REPO_ROOT / "docs" / "benchmarks.md", default=None, type=Path,
                   metavar="PATH", help="write the table into docs/benchmarks.md (or PATH)")
    p.add_argument("--table", default=None, help="name of the docs table (default <model>-<device>[-max-frames])")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """The command; returns the measured rows (also written to ``--out``)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    threads = torch.get_num_threads()
    try:
        return _bench(args, argv)
    finally:
        torch.set_num_threads(threads)  # callers (tests, notebooks) keep their own setting


def _bench(args: argparse.Namespace, argv: list[str] | None) -> list[dict[str, Any]]:
    from vlc.evaluation.efficiency import device_name
    from vlc.run import CONFIG_DIR

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("vlc-bench --device cuda: CUDA is not available on this machine; use --device cpu")
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    specs, shared = variants(args.overrides, CONFIG_DIR)
    model_name = next((o.partition("=")[2] for o in shared if o.startswith("model=")), "tiny")
    frames = parse_frames(args.frames)
    limit_gb = args.mem_limit_gb if args.mem_limit_gb is not None else (4.0 if device.type == "cpu" else None)
    mem_limit_mb = limit_gb * 1024 if (args.max_frames and limit_gb) else None
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = args.out or REPO_ROOT / "logs" / "bench" / stamp
    out.mkdir(parents=True, exist_ok=True)
    where = device_name(device)

    rows: list[dict[str, Any]] = []
    maxima: list[dict[str, Any]] = []
    started = time.perf_counter()
    for spec, own in specs:
        cfg = compose([*shared, *own], CONFIG_DIR)
        size = args.frame_size or int(cfg.model.encoder.img_size or 224)
        cache = args.cache or _data_dir() / "bench"
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = build(cfg).eval().to(device)
        backend = cfg.data.get("backend", "decord")
        log.info("%s: built in %.1f s", spec, time.perf_counter() - t0)

        def run(n: int) -> dict[str, Any]:
            # A list of sizes decodes every frame of an n-frame video; the max-frames search samples n
            # frames uniformly from the next power-of-two video, so bisection probes reuse a few files.
            length = 1 << (n - 1).bit_length() if args.max_frames else n
            video = haystack_video(cache, length, size) if args.from_video else None
            reps = [measure(model, n, size, video, device, backend, precision, mem_limit_mb, lazy=args.decode == "lazy")
                    for _ in range(max(1, args.repeats))]
            row = {"model": model_name, "compressor": spec, "status": "ok", "device": where, **median_row(reps)}
            log.info("%s %5d frames: %6d visual, %6d kv tokens, context %.0f ms, peak %.0f MiB (+%.0f)",
                     spec, n, row["visual_tokens"], row["kv_tokens"], row["context_ms"], row["peak_mem_mb"],
                     row["peak_delta_mb"])
            return row

        def oom_row(n: int) -> dict[str, Any]:
            return {"model": model_name, "compressor": spec, "frames": n, "status": "oom", "device": where}

        if args.warmup:  # first-call costs (allocator, kernels, lazy modules) are not the compressor's
            video = haystack_video(cache, min(frames), size) if args.from_video else None
            try:
                measure(model, min(frames), size, video, device, backend, precision, lazy=args.decode == "lazy")
            except OutOfMemory:
                pass
        if args.max_frames:
            fitted: dict[int, dict[str, Any]] = {}

            def fits(n: int) -> bool:
                try:
                    fitted[n] = run(n)
                    rows.append(fitted[n])
                    return True
                except OutOfMemory as error:
                    log.info("%s %5d frames: out of memory (%s)", spec, n, error)
                    rows.append(oom_row(n))
                    return False

            with cpu_data_limit(mem_limit_mb if device.type == "cpu" else None):
                best, first_oom = find_max_frames(fits, frames[0], args.frames_cap)
            maxima.append(dict(compressor=spec, max_frames=best, first_oom=first_oom,
                               peak_mem_mb=fitted[best]["peak_mem_mb"] if best in fitted else None,
                               limit=f"{limit_gb:g} GB" if limit_gb else "device", device=where))
        else:
            for n in frames:
                try:
                    rows.append(run(n))
                except OutOfMemory as error:
                    log.info("%s %5d frames: out of memory (%s)", spec, n, error)
                    rows.append(oom_row(n))
        del model
    seconds = time.perf_counter() - started

    write_csv(rows, out / "bench.csv")
    command = "vlc-bench " + " ".join(argv if argv is not None else sys.argv[1:])
    source = {"lazy": "decoded lazily from mp4", "eager": "decoded from mp4"}[args.decode] if args.from_video else "random pixels"
    header = (f"`{command.strip()}` — {model_name}, {source}, "
              f"{precision}, measured {stamp[:10]} on {where} in {seconds:.0f} s.")
    body = [header, "", markdown_table(rows)]
    compared = scaling(rows)
    if compared:  # how each compressor's memory scales against every token entering the LLM
        body += ["", scaling_table(compared)]
    if maxima:  # the docs get the summary; every probe stays in bench.md and bench.csv
        with open(out / "max_frames.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(maxima[0]))
            writer.writeheader()
            writer.writerows(maxima)
        body = [header, "", max_frames_table(maxima), "", "Every probe:", "", markdown_table(rows)]
    (out / "bench.md").write_text("\n".join(body) + "\n")
    log.info("%d measurements in %.0f s; wrote %s", len(rows), seconds, out)
    print("\n".join(body))
    if args.update_docs:
        name = args.table or f"{model_name}-{device.type}" + ("-max-frames" if args.max_frames else "")
        update_docs(args.update_docs, name, "\n".join(body if not maxima else body[:3]))
        log.info("updated %s (table %s)", args.update_docs, name)
    return rows


def _data_dir() -> Path:
    """configs/paths/default.yaml's data_dir, without Hydra's runtime: VLC_DATA_DIR or <VLC_ROOT>/data."""
    return Path(os.environ.get("VLC_DATA_DIR") or Path(os.environ.get("VLC_ROOT", ".")) / "data")


if __name__ == "__main__":
    main()
