"""What vlc's training step costs against the bare compute it runs: a timm ViT, an MLP projector and a
Hugging Face Qwen2, forward and backward in plain PyTorch on the same tensors.

    OMP_NUM_THREADS=1 python scripts/step_overhead.py                  # the default config, 20 pairs per phase
    python scripts/step_overhead.py --repeats 40 --update-docs         # and write the figures into docs/benchmarks.md
    python scripts/step_overhead.py --repeats 2 --warmup 1 data.batch_size=2 data.num_frames=8   # a smoke run

The step is the default training config (``model=tiny``, ``experiment=vst_ratio16``, its data, callbacks,
logger, gradient clipping and optimizer) run by the Lightning Trainer that ``train.py`` builds, with
validation and checkpoint writing switched off (neither is part of a step). Two phases, each a fresh
model from the same seed: the uncompressed warm-up (``model.uncompressed_steps``, the first 500 steps
of the default) and the compressed vst phase (``model.uncompressed_steps=0``).

One measurement is a pair, run back to back on one batch: vlc's step, timed from Lightning's
``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, clipping, AdamW step, the
callbacks), then the bare step on that batch's tensors: the pixels through the timm ViT (same
architecture and size) and the projector, and one causal forward of the HF Qwen2 (same config) over
as many tokens as vlc's LLM read in that step: prefix + visual (+ the beacons vst inserted) + question
and answer, with the cross entropy on the answer tokens and the backward pass. The AdamW step of the
bare parameters is timed apart, so the ratio is given against forward/backward alone (``ratio``) and
with the optimizer step (``ratio_with_optimizer``). Pairs alternate, so a change in the machine's load
hits both; medians after ``--warmup`` pairs; one torch thread by default.

Prints the table and one JSON line; ``--out`` writes the JSON, ``--update-docs`` the table.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OVERRIDES = ("experiment=vst_ratio16",)
PHASES = {"uncompressed": None, "compressed": 0}  # phase → model.uncompressed_steps (None: the config's)
TABLE = "step-overhead"


class BareStep:
    """The compute of vlc's step without vlc: timm ViT → MLP projector → HF causal LM, plain PyTorch.

    Built from the same config keys as vlc's backbone (``model.encoder``, ``model.llm.config``), random
    init. ``forward_backward`` runs one step's forward and backward; ``optimizer_step`` its AdamW step.
    """

    def __init__(self, model_cfg, vocab_size: int, lr: float = 1e-3) -> None:
        import timm
        from transformers import AutoConfig, AutoModelForCausalLM

        enc = model_cfg.encoder
        self.vit = timm.create_model(enc.name, pretrained=False, num_classes=0, img_size=enc.img_size,
                                     **dict(enc.model_kwargs or {}))
        llm_config = dict(model_cfg.llm.config)
        llm_config["vocab_size"] = max(vocab_size, int(llm_config.get("vocab_size") or 0))
        self.llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**llm_config), dtype=torch.float32,
                                                    attn_implementation="sdpa")
        width = self.llm.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(self.vit.embed_dim, width), nn.GELU(), nn.Linear(width, width))
        cfg = self.vit.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
        # transformers 5.24 renamed the forward's past_key_values to cache
        self.cache_keyword = ("cache" if "cache" in inspect.signature(type(self.llm).forward).parameters
                              else "past_key_values")
        self.parameters = [p for m in (self.vit, self.projector, self.llm) for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=lr)

    def forward_backward(self, pixels: Tensor, prefix_ids: Tensor, text_ids: Tensor, text_mask: Tensor,
                         labels: Tensor, extra_tokens: int = 0, one_pass: bool = False) -> float:
        """pixels (B, T, 3, S, S) uint8; prefix_ids (S_p,); text_ids / text_mask / labels (B, L_t),
        right-padded; extra_tokens: slots after the visual tokens (vst's beacons). Returns the loss.

        By default the LLM runs as vlc runs it: the context (prefix, visual tokens) prefilled into a
        KV cache, then the question and answer continued from it. ``one_pass``: one causal forward
        over context and text instead (the same tokens; on CPU, SDPA makes it slower)."""
        B, T = pixels.shape[:2]
        x = (pixels.flatten(0, 1).float() / 255 - self.mean) / self.std  # (B·T, 3, S, S)
        feats = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]  # (B·T, N, Dv)
        embed = self.llm.get_input_embeddings()
        visual = self.projector(feats).reshape(B, -1, embed.embedding_dim)  # (B, T·N, D)
        parts = [embed(prefix_ids)[None].expand(B, -1, -1), visual]
        if extra_tokens:
            parts.append(embed.weight[:1][None].expand(B, extra_tokens, -1))  # (B, nb, D)
        context = torch.cat(parts, 1)  # (B, C, D)
        text = embed(text_ids)  # (B, L_t, D)
        if one_pass:
            # No attention mask: the text is right-padded, and under causal attention a pad at the end
            # is seen by no real token, while its label is -100.
            logits = self.llm(inputs_embeds=torch.cat([context, text], 1), logits_to_keep=text_ids.shape[1]).logits
        else:
            C = context.shape[1]
            out = self.llm.model(inputs_embeds=context, use_cache=True,
                                 **{self.cache_keyword: DynamicCache(config=self.llm.config)})
            mask = torch.cat([torch.ones(B, C, dtype=torch.long), text_mask], 1)
            positions = (C + torch.arange(text_ids.shape[1]))[None].expand(B, -1)
            logits = self.llm(inputs_embeds=text, attention_mask=mask, position_ids=positions, use_cache=True,
                              **{self.cache_keyword: out[self.cache_keyword]}).logits  # (B, L_t, V)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        return loss.item()

    def optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class PairedTimer(L.Callback):
    """Times each vlc step (on_train_batch_start → on_train_batch_end), then runs the bare step on
    the same batch and times it: one interleaved pair per training step."""

    def __init__(self, bare: BareStep) -> None:
        self.bare = bare
        self.vlc: list[float] = []
        self.bare_fwd_bwd: list[float] = []
        self.bare_opt: list[float] = []
        self.bare_one_pass: list[float] = []
        self.tokens: list[dict[str, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.vlc.append(time.perf_counter() - self._start)
        prompt = pl_module.pipeline.prompt
        text = prompt.training_batch(batch["questions"], batch["candidates"], batch["answers"])
        prefix = torch.tensor(prompt.prefix_ids())
        beacons = 0
        if pl_module.compressing and getattr(pl_module.compressor, "kind", None) == "cache":
            beacons = sum(nb for _, _, nb in getattr(pl_module.compressor, "last_windows", []))
        B, T = batch["pixels"].shape[:2]
        visual = T * pl_module.backbone.tokens_per_frame
        self.tokens.append(dict(batch=B, prefix=len(prefix), visual=visual, beacons=beacons, text=text.ids.shape[1]))
        args = (batch["pixels"], prefix, text.ids, text.mask, text.labels, beacons)
        with torch.enable_grad():
            start = time.perf_counter()
            self.bare.forward_backward(*args)
            middle = time.perf_counter()
            self.bare.optimizer_step()
            end = time.perf_counter()
            self.bare.forward_backward(*args, one_pass=True)
            last = time.perf_counter()
            self.bare.optimizer.zero_grad(set_to_none=True)
        self.bare_fwd_bwd.append(middle - start)
        self.bare_opt.append(end - middle)
        self.bare_one_pass.append(last - end)


def compose_train(overrides: list[str], work: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vlc.run import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")
        del cfg.hydra
    return cfg


def measure_phase(phase: str, overrides: list[str], steps: int, work: Path) -> PairedTimer:
    import hydra

    from vlc.run import build_model, build_trainer

    run = [
        *overrides, f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "+trainer.enable_checkpointing=false",
        "~callbacks.model_checkpoint", "trainer.enable_model_summary=false",
    ]
    if PHASES[phase] is not None:
        run.append(f"model.uncompressed_steps={PHASES[phase]}")
    cfg = compose_train(run, work / phase)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = build_model(cfg)
    expected = phase == "compressed"
    timer = PairedTimer(BareStep(cfg.model, len(model.backbone.tokenizer), lr=float(cfg.optim.lr)))
    trainer = build_trainer(cfg)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=datamodule)
    model.train()
    if model.compressing != expected:  # the phase must be the one named: a config change could flip it
        raise RuntimeError(f"step_overhead: phase {phase} ran with compressing={model.compressing}")
    return timer


def summary(timer: PairedTimer, warmup: int) -> dict:
    vlc, bare, opt = timer.vlc[warmup:], timer.bare_fwd_bwd[warmup:], timer.bare_opt[warmup:]
    one_pass = timer.bare_one_pass[warmup:]
    if not vlc:
        raise ValueError(f"step_overhead: {len(timer.vlc)} steps ran, none left after --warmup {warmup}")
    med = {k: statistics.median(v) for k, v in (("vlc", vlc), ("bare", bare), ("opt", opt), ("one", one_pass))}
    tokens = timer.tokens[warmup:]
    per_sample = [t["prefix"] + t["visual"] + t["beacons"] + t["text"] for t in tokens]
    return dict(
        pairs=len(vlc), vlc_ms=1000 * med["vlc"], bare_ms=1000 * med["bare"], bare_optimizer_ms=1000 * med["opt"],
        bare_one_pass_ms=1000 * med["one"],
        ratio=med["vlc"] / med["bare"], ratio_with_optimizer=med["vlc"] / (med["bare"] + med["opt"]),
        ratio_one_pass=med["vlc"] / med["one"],
        # per pair: vst draws a training ratio per window, so the beacons (and the text) vary by step
        tokens=dict(batch=tokens[0]["batch"], prefix=tokens[0]["prefix"], visual=tokens[0]["visual"],
                    beacons_each=[t["beacons"] for t in tokens], text_each=[t["text"] for t in tokens],
                    beacons_median=statistics.median_low(t["beacons"] for t in tokens),
                    text_median=statistics.median_low(t["text"] for t in tokens),
                    per_sample_median=statistics.median_low(per_sample)),
        vlc_ms_each=[round(1000 * s, 2) for s in vlc], bare_ms_each=[round(1000 * s, 2) for s in bare],
    )


def table(result: dict) -> str:
    lines = ["| phase | pairs | tokens per sample | vlc step ms | bare fwd+bwd ms "
             "| bare AdamW ms | bare one-pass fwd+bwd ms | vlc ÷ bare fwd+bwd | vlc ÷ (bare + AdamW) "
             "| vlc ÷ bare one-pass |", "|---|---|---|---|---|---|---|---|---|---|"]
    for phase, r in result["phases"].items():
        t = r["tokens"]
        tokens = (f"{t['per_sample_median']} (median; prefix {t['prefix']}, visual {t['visual']}, beacons "
                  f"{t['beacons_median']}, text {t['text_median']})")
        lines.append(f"| {phase} | {r['pairs']} | {tokens} | {r['vlc_ms']:.1f} | {r['bare_ms']:.1f} "
                     f"| {r['bare_optimizer_ms']:.1f} | {r['bare_one_pass_ms']:.1f} | **{r['ratio']:.3f}** "
                     f"| {r['ratio_with_optimizer']:.3f} | {r['ratio_one_pass']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed pairs per phase (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed pairs first (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--phases", default=",".join(PHASES), help="uncompressed,compressed (default both)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--update-docs", nargs="?", const=ROOT / "docs" / "benchmarks.md", default=None, type=Path,
                        metavar="PATH", help="write the table into docs/benchmarks.md (or PATH)")
    parser.add_argument("override", nargs="*", help="Hydra overrides after the default's experiment=vst_ratio16, "
                                                    "e.g. data.batch_size=2")
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"step_overhead --phases: unknown {unknown}; choose from {', '.join(PHASES)}")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"step_overhead: --repeats {args.repeats} must be >= 1 and --warmup {args.warmup} >= 0")

    from vlc.evaluation.efficiency import device_name

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    overrides = [*DEFAULT_OVERRIDES,
                 # a small synthetic set (same videos, same shapes) instead of generating the default's 2000
                 "data.synthetic.num_train=64", "data.synthetic.num_val=8", *args.override]
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="vlc-step-overhead-") as work:
            phases_out = {p: summary(measure_phase(p, overrides, args.warmup + args.repeats, Path(work)), args.warmup)
                          for p in phases}
    finally:
        torch.set_num_threads(threads)
    command = "python scripts/step_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = dict(command=command.strip(), overrides=overrides, device=device_name("cpu").split(" (")[0],
                  threads=args.threads, seconds=round(time.perf_counter() - started, 1),
                  date=datetime.date.today().isoformat(), phases=phases_out)
    text = table(result)
    print(text)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.update_docs:
        from vlc.evaluation.bench import update_docs

        head = (f"`{result['command']}` — model=tiny, {' '.join(overrides)}, {result['device']} "
                f"({args.threads} thread{'s' if args.threads > 1 else ''}), measured {result['date']} in "
                f"{result['seconds']:.0f} s; medians of interleaved pairs after {args.warmup} untimed.")
        update_docs(args.update_docs, TABLE, head + "\n\n" + text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
