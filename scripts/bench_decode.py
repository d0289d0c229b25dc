"""Decoding for the encoder: time and memory of sampling N frames at the encoder's size, before and after.

    python scripts/bench_decode.py                      # 128 frames of a 60 s 720p clip at 336 px
    python scripts/bench_decode.py --long               # also 32 frames of a 10-minute 360p clip
    python scripts/bench_decode.py --seconds 4 --height 144 --width 256 --frames 16 --repeats 1  # smoke

The clips are generated here with PyAV (H.264, libx264 defaults: a keyframe every 250 frames),
textured and moving so that decoding costs what it costs on real footage, and cached in ``--cache``.

Each measurement runs in a fresh process, one after another (never two at once; before and after
alternate), after one small warm-up read, and reports the wall and CPU time of the call (CPU time
is what a shared machine's load does not inflate) and its peak resident memory above the process's
resident memory just before it (``VmHWM`` after resetting it through ``/proc/self/clear_refs``).
Medians of ``--repeats`` runs. Rows:

- ``before``: the decoding path of vlc up to this change, re-stated here in a few lines so the two
  are measured side by side in one run: every sampled frame decoded at full size (decord:
  ``get_batch`` of the whole clip; PyAV: every frame up to the last sampled one), the whole clip
  converted to float32 and resized at once (bilinear, antialiased).
- ``after``: ``vlc.data.video.read_video`` as it is now, same frames, same size.

The ``pixels`` column compares each ``after`` row with the ``before`` row of the same backend:
mean and max absolute difference (0-255) and whether the timestamps are identical.
"""

from __future__ import annotations

import argparse
import fractions
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the clip


def make_clip(path: Path, seconds: float, height: int, width: int, fps: int = 30, seed: int = 0) -> Path:
    """A textured, moving H.264 clip: a random block texture panned a few pixels per frame (a camera
    pan), a slowly drifting colour cast and a moving bright square, so motion search and residuals
    are busy, as in real footage."""
    import av

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    pad = 256
    texture = rng.integers(0, 256, (height // 8 + pad // 8 + 2, width // 8 + pad // 8 + 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture, 8, 0), 8, 1)  # 8×8 blocks: texture at the scale of macroblocks
    texture = (0.6 * texture + 0.4 * rng.integers(0, 256, texture.shape)).astype(np.uint8)
    tmp = path.with_suffix(".tmp.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "threads": "2"}
        for i in range(round(seconds * fps)):
            dy, dx = (2 * i) % pad, (3 * i) % pad
            frame = texture[dy : dy + height, dx : dx + width].copy()
            cast = int(40 * np.sin(2 * np.pi * i / (8 * fps)))  # a slow colour drift, no flicker
            frame[..., 0] = np.clip(frame[..., 0].astype(np.int16) + cast, 0, 255).astype(np.uint8)
            s = max(8, height // 6)
            y0, x0 = (i * 5) % (height - s), (i * 7) % (width - s)
            frame[y0 : y0 + s, x0 : x0 + s] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


# ---------------------------------------------------------------------------------------------
# the path before this change, restated (vlc.data.video as of commit 8cb5002)


def before_read(path: str, num_frames: int, backend: str, size: tuple[int, int]):
    import torch
    import torch.nn.functional as F

    from vlc.data.sampling import frame_times, uniform_indices

    if backend == "decord":
        import decord

        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        num_total, native_fps = len(reader), float(reader.get_avg_fps())
        indices = uniform_indices(num_total, num_frames)
        unique, inverse = np.unique(indices, return_inverse=True)
        decoded = reader.get_batch(unique.tolist()).asnumpy()  # (T, H, W, 3) uint8, full size
    else:
        import av
        from av.video.reformatter import VideoReformatter

        with av.open(path) as container:
            stream = container.streams.video[0]
            num_total, native_fps = stream.frames, float(stream.average_rate)
        indices = uniform_indices(num_total, num_frames)
        unique, inverse = np.unique(indices, return_inverse=True)
        to_rgb, wanted, out = VideoReformatter(), {int(i): k for k, i in enumerate(unique)}, [None] * len(unique)
        with av.open(path) as container:
            for n, frame in enumerate(container.decode(container.streams.video[0])):
                if n in wanted:
                    out[wanted[n]] = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                if n >= unique[-1]:
                    break
        decoded = np.stack(out)
    frames = torch.from_numpy(decoded[inverse])
    x = frames.permute(0, 3, 1, 2).float()  # the whole clip in float32 at full size
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return frames, torch.from_numpy(frame_times(indices, native_fps))


def after_read(path: str, num_frames: int, backend: str, size: tuple[int, int]):
    from vlc.data.video import read_video

    # squash, as before: the same pixels, so the two can be compared (pad and crop differ by design)
    clip = read_video(path, num_frames=num_frames, backend=backend, size=size, aspect="squash")
    return clip.frames, clip.times


# ---------------------------------------------------------------------------------------------
# one measurement, in a fresh process


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(args: argparse.Namespace) -> None:
    """Child process: one call, its time and peak memory; frames saved for the comparison."""
    import torch

    torch.set_num_threads(1)
    import av  # noqa: F401 - imported before the baseline, like the code under test
    import decord  # noqa: F401

    import vlc.data.video  # noqa: F401

    read = before_read if args.path_kind == "before" else after_read
    size = (args.size, args.size)
    read(args.warmup, 4, args.backend, size)  # one-off library and thread-pool set-up, outside the figure
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    base = _rss_kb("VmRSS")
    cpu0, start = _cpu_seconds(), time.perf_counter()
    frames, times = read(args.video, args.frames, args.backend, size)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    peak = _rss_kb("VmHWM")
    np.save(args.save, frames.numpy())
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mb": (peak - base) / 1024,
                      "times": times.tolist(), "shape": list(frames.shape)}))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(video: Path, path_kind: str, backend: str, frames: int, size: int, save: Path, warmup: Path) -> dict:
    # The child imports vlc the way this process does (a PYTHONPATH given to this script comes first).
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "src")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, __file__, "--child", "--video", str(video), "--path-kind", path_kind, "--backend", backend,
           "--frames", str(frames), "--size", str(size), "--save", str(save), "--warmup", str(warmup)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(video: Path, label: str, frames: int, size: int, backends: list[str], repeats: int, work: Path) -> list[dict]:
    rows = []
    for backend in backends:
        results = {"before": [], "after": []}
        for _ in range(repeats):  # before and after alternate, so a change in the machine's load hits both
            for path_kind in ("before", "after"):
                results[path_kind].append(run_child(video, path_kind, backend, frames, size,
                                                    work / f"{backend}-{path_kind}.npy", work / "warmup.mp4"))
        ref = np.load(work / f"{backend}-before.npy").astype(np.int16)
        new = np.load(work / f"{backend}-after.npy").astype(np.int16)
        diff = np.abs(ref - new) if ref.shape == new.shape else None
        for path_kind in ("before", "after"):
            runs = results[path_kind]
            row = {
                "clip": label, "backend": backend, "path": path_kind, "frames": frames, "size": size,
                "seconds": statistics.median(r["seconds"] for r in runs),
                "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
                "peak_mb": statistics.median(r["peak_mb"] for r in runs),
            }
            if path_kind == "after":
                row["mean_diff"] = float(diff.mean()) if diff is not None else None
                row["max_diff"] = int(diff.max()) if diff is not None else None
                row["same_times"] = results["after"][0]["times"] == results["before"][0]["times"]
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| clip | backend | path | wall (s) | CPU (s) | peak memory above baseline (MB) "
             "| pixels vs before (mean / max abs) | same times |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pixels = f"{r['mean_diff']:.3f} / {r['max_diff']}" if r.get("mean_diff") is not None else "–"
        same = {True: "yes", False: "no"}.get(r.get("same_times"), "–")
        lines.append(f"| {r['clip']} | {r['backend']} | {r['path']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                     f"{r['peak_mb']:.0f} | {pixels} | {same} |")
    by = {(r["clip"], r["backend"], r["path"]): r for r in rows}
    lines.append("")
    for (clip, backend, path), r in by.items():
        if path == "after":
            b = by[(clip, backend, "before")]
            lines.append(f"- {clip}, {backend}: wall {r['seconds'] / b['seconds']:.2f}×, "
                         f"CPU {r['cpu_seconds'] / b['cpu_seconds']:.2f}× before, "
                         f"memory {r['peak_mb'] / max(b['peak_mb'], 1e-9):.3f}× before")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="/tmp/vlc-bench-decode", help="folder for the generated clips")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--size", type=int, default=336, help="the encoder's square input side")
    parser.add_argument("--backends", default="decord,av")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported")
    parser.add_argument("--long", action="store_true", help="also 32 frames of a 10-minute 360p clip")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    # the child process's arguments
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    parser.add_argument("--path-kind", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measure(args)
        return []
    cache = Path(args.cache)
    backends = args.backends.split(",")
    make_clip(cache / "warmup.mp4", 1.0, 64, 64)
    label = f"{args.seconds:g} s {args.height}p"
    name = f"pan-{args.seconds:g}s-{args.height}x{args.width}.mp4"
    video = make_clip(cache / name, args.seconds, args.height, args.width)
    rows = bench(video, label, args.frames, args.size, backends, args.repeats, cache)
    if args.long:
        long = make_clip(cache / "pan-600s-360x640.mp4", 600.0, 360, 640)
        rows += bench(long, "600 s 360p", 32, args.size, backends, args.repeats, cache)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
