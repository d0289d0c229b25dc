"""Train a few steps of the 7B geometry on one GPU and report loss, step time and peak memory.

Video-XL's backbone (CLIP ViT-L/14-336, 144 tokens per frame, + Qwen2-7B) built from the configs
with random weights (nothing is downloaded: model.llm.name_or_path=null builds Qwen2-7B from the
`llm.config` block in configs/model/videoxl_7b.yaml, the tokenizer is the local tiny one), vst
compression inside the LLM, 128 synthetic frames per sample, gradient checkpointing, bf16-mixed,
through the same Lightning Trainer that train.py builds:

    python scripts/train_step_7b.py                       # full fine-tune of projector + LLM + beacons (bf16)
    python scripts/train_step_7b.py --mode lora           # LoRA on the LLM (experiment=videoxl_stage2_lora)
    python scripts/train_step_7b.py --frames 256 --steps 3 --out step_7b.json
    python scripts/train_step_7b.py --tiny --frames 8     # the same code path on the tiny backbone, CPU

Prints one JSON line: {loss, step_seconds, peak_memory_gb, visual_tokens, kv_tokens, ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from vlc.run import CONFIG_DIR, build_model, build_trainer

MODES = {
    # One GPU holds the 7.6B weights, gradients and AdamW moments only in bf16 (~61 GB): this
    # measures that step; real full fine-tuning keeps float32 master weights and shards
    # (experiment=videoxl_stage2 with trainer=fsdp|deepspeed, docs/scaling.md).
    "full": ["experiment=videoxl_stage2", "model.llm.dtype=bfloat16"],
    "lora": ["experiment=videoxl_stage2_lora"],
    "projector": ["experiment=videoxl_stage2", "model.freeze.llm=true", "model.freeze.compressor=true"],
}


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)
        self.losses.append(float(outputs["loss"]) * trainer.accumulate_grad_batches)


def overrides(args: argparse.Namespace, data_dir: str) -> list[str]:
    out = [
        *MODES[args.mode],
        "trainer.accumulate_grad_batches=1", f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0", "+trainer.enable_checkpointing=false", "trainer.enable_model_summary=false",
        "logger=none", "callbacks=none",
        f"data.num_frames={args.frames}", "data.batch_size=1", "data.num_workers=0",
        f"data.synthetic.num_frames={args.frames}", f"data.synthetic.num_train={max(2, args.steps)}",
        "data.synthetic.num_val=1", "data.synthetic.frame_size=64", f"paths.data_dir={data_dir}",
        "model.llm.name_or_path=null", "model.tokenizer.name_or_path=null", "model.encoder.pretrained=false",
        "model.gradient_checkpointing=true",
    ]
    if args.tiny:  # the same path on the offline tiny backbone (CPU smoke test of this script)
        out += ["model=tiny", "model.gradient_checkpointing=true", "trainer=cpu", "trainer.precision=bf16-mixed",
                "compressor.window=160"]
    else:
        out += ["trainer=gpu", "trainer.devices=1"]
    return out + list(args.override)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="the first step includes warm-up (cuDNN, allocator)")
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides, e.g. compressor.ratio=8")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("train_step_7b: no CUDA device; use --tiny for the CPU smoke run")

    work = Path(tempfile.mkdtemp(prefix="vlc-step7b-"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides(args, str(work / "data")), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")
        del cfg.hydra
    L.seed_everything(cfg.seed)

    import hydra

    datamodule = hydra.utils.instantiate(cfg.data)
    device = "cpu" if args.tiny else "cuda"
    start = time.perf_counter()
    with torch.device(device):  # initialise the 7B's random weights on the GPU directly
        model = build_model(cfg)
    build_seconds = time.perf_counter() - start
    timer = StepTimer()
    trainer = build_trainer(cfg)
    trainer.callbacks.append(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, datamodule=datamodule)

    model.eval()
    batch = next(iter(datamodule.train_dataloader()))
    batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        ctx = model.pipeline.encode_context(batch)
    result = dict(
        mode=args.mode, frames=args.frames, tiny=args.tiny,
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        tokens_per_frame=model.backbone.encoder.tokens_per_frame,
        visual_tokens=int(ctx.visual_tokens[0]), kv_tokens=int(ctx.attention_mask.sum()),
        losses=[round(x, 5) for x in timer.losses], step_seconds=[round(x, 3) for x in timer.seconds],
        build_seconds=round(build_seconds, 1),
        peak_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    )
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
