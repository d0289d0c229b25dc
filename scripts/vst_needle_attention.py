"""Where a trained vst model's beacons look: attention mass on the needle frame, per needle colour.

    python scripts/vst_needle_attention.py logs/train/runs/<run>/checkpoints/last.ckpt [--layer L]

For each validation clip of the synthetic needle task, the ratio is set to the encoder's tokens per
frame, so one beacon follows each frame. For the beacon right after the needle frame, the script
takes one decoder layer's attention (default the first; any layer but the last, whose beacons
contribute only their KV) and sums its weights over the needle frame's tokens, per head. Printed per
needle colour: each head's mean mass, the best head's, and the model's accuracy on those clips at the
checkpoint's own ratio. A beacon that puts little weight on the flash cannot carry its colour,
whatever the ratio (docs/vst.md).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from vlc.compressors import vst as vst_module
from vlc.model.video_llm import VideoLLM


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float, int, list[float]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("--layer", type=int, default=0, help="decoder layer (0 = first; not the last)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = VideoLLM.load_from_checkpoint(str(args.ckpt), map_location="cpu").eval()
    vst = model.compressor
    if not isinstance(vst, vst_module.VisualSummarizationTokens):
        raise SystemExit(f"{args.ckpt}: the compressor is {type(vst).__name__}, not vst")
    config = args.ckpt.parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        raise SystemExit(f"{config}: the run's Hydra config is needed to rebuild its validation data")
    cfg = OmegaConf.load(config)
    if cfg.data.get("synthetic", {}).get("task", "needle") != "needle":
        raise SystemExit(f"{config}: data.synthetic.task is {cfg.data.synthetic.task}, this script needs needle")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("validate")

    per_window = len(vst.beacon_q) - 1  # attention runs in every layer but the last
    if not 0 <= args.layer < per_window:
        raise SystemExit(f"--layer {args.layer}: beacon attention that is read runs in layers 0..{per_window - 1}")
    with torch.no_grad():
        correct = {r["id"]: r["correct"] for batch in datamodule.val_dataloader() for r in model.pipeline.evaluate(batch)}
    per_frame = model.backbone.encoder.tokens_per_frame
    frames_per_window = vst.window // per_frame
    if frames_per_window < 1:
        raise SystemExit(f"compressor.window={vst.window} is shorter than one frame ({per_frame} tokens)")
    vst.ratio, vst.window = per_frame, frames_per_window * per_frame  # one beacon after each frame

    calls: list[tuple] = []  # (q, rotated k, v, scale, output) per attention call
    real_attend = vst_module._attend

    def attend(q, k, v, scale, dropout, attention):
        o = real_attend(q, k, v, scale, dropout, attention)
        calls.append((q, k, v, scale, o))
        return o

    mass: dict[str, list[float]] = collections.defaultdict(list)
    right: dict[str, list[bool]] = collections.defaultdict(list)
    vst_module._attend = attend
    try:
        for batch in datamodule.val_dataloader():
            calls.clear()
            with torch.no_grad():
                model.pipeline.encode_context(batch)
            layer = calls[per_window + args.layer :: per_window]  # the prefix's calls come first
            for b, meta in enumerate(batch["meta"]):
                window, j = divmod(int(meta["needle_index"]), frames_per_window)
                q, k, v, scale, o = layer[window]
                m = k.shape[2] - q.shape[2]  # memory entries before this window
                slot = (j + 1) * per_frame + j  # the beacon after frame j of the window
                keys = k[b].repeat_interleave(q.shape[1] // k.shape[1], 0)  # (H, m + L, Dh)
                weights = ((q[b, :, slot, None] * keys[:, : m + slot + 1]).sum(-1) * scale).softmax(-1)
                # These weights are the model's: they reproduce its attention output for this beacon.
                values = v[b].repeat_interleave(q.shape[1] // v.shape[1], 0)[:, : m + slot + 1]
                mixed = torch.einsum("hk,hkd->hd", weights, values).reshape(-1)
                assert torch.allclose(mixed, o[b, slot], atol=1e-5), "attention weights do not reproduce the output"
                needle = [m + t + t // per_frame for t in range(j * per_frame, (j + 1) * per_frame)]
                mass[meta["color"]].append(weights[:, needle].sum(-1))  # (H,)
                right[meta["color"]].append(bool(correct[batch["ids"][b]]))
    finally:
        vst_module._attend = real_attend

    out = {}
    print(f"layer {args.layer}: attention mass of the beacon after the needle frame on that frame")
    print(f"{'colour':10s} {'clips':>5s} {'needle mass':>11s} {'accuracy':>8s}  per head")
    for colour in sorted(mass):
        heads = torch.stack(mass[colour]).mean(0).tolist()  # mean over clips, per head
        out[colour] = (max(heads), sum(right[colour]) / len(right[colour]), len(mass[colour]), heads)
        print(f"{colour:10s} {out[colour][2]:5d} {out[colour][0]:11.3f} {out[colour][1]:8.3f}  "
              + " ".join(f"{h:.2f}" for h in heads))
    return out


if __name__ == "__main__":
    main()
