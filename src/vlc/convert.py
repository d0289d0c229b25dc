"""`vlc-convert`: released checkpoints into vlc's own module layout.

    vlc-convert videoxl /models/VideoXL_weight_8 videoxl.ckpt

reads Video-XL's folder (``vlc.backbone.hf.videoxl``: every key placed, any missing or unexpected
one an error) and writes one file, ``torch.load``-able without vlc:

    state_dict:  backbone.encoder.*    the CLIP vision tower (transformers CLIPVisionModel keys)
                 backbone.projector.*  the mm_projector (nn.Sequential keys)
                 backbone.llm.*        the Qwen2 causal LM (Qwen2ForCausalLM keys)
                 compressor.*          vst's beacon_q/k/v.N.{weight,bias} and beacon_embed
    vlc_convert: {"source": "videoxl", "folder": ..., "config": Video-XL's config.json,
                  "compressor": {"window": 1440, "ratio": 8, "ratios": [2, 4, 8]} (its vst settings)}

The same weights load without converting: ``model.backbone.family=videoxl`` reads the folder itself
(``configs/model/videoxl_7b_released.yaml``); the file is for moving one self-contained checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def convert_videoxl(folder: str | Path, out: str | Path, dtype: str = "bfloat16") -> dict:
    from vlc.backbone.hf.videoxl import VST_TARGET, VideoXLBackbone

    backbone = VideoXLBackbone.from_pretrained(str(folder), dtype=dtype, attn_implementation="sdpa")
    state = {}
    for part in ("encoder", "projector", "llm"):
        state.update({f"backbone.{part}.{k}": v for k, v in getattr(backbone, part).state_dict().items()})
    beacons = backbone.pretrained_compressor_state[VST_TARGET]
    state.update({f"compressor.{k}": v.to(backbone.llm.dtype) for k, v in beacons.items()})
    meta = {"source": "videoxl", "folder": str(Path(folder).expanduser().resolve()),
            "config": backbone.config_json, "compressor": backbone.vst_settings}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "vlc_convert": meta}, out)
    return meta


CONVERTERS = {"videoxl": convert_videoxl}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vlc-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=sorted(CONVERTERS), help="which released checkpoint layout")
    parser.add_argument("folder", help="the released checkpoint folder (config.json + weights)")
    parser.add_argument("out", help="the file to write (e.g. videoxl.ckpt)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    meta = CONVERTERS[args.source](args.folder, args.out, dtype=args.dtype)
    print(f"wrote {args.out}: {args.source} from {meta['folder']}, vst settings {meta['compressor']}")


if __name__ == "__main__":
    main()
