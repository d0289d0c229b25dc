"""``VideoLLM``: the Lightning task around a ``VideoPipeline`` — optimisation, the uncompressed
warm-up schedule, evaluation bookkeeping and logging. The model itself is ``self.pipeline``.

The pipeline is built from plain config dicts that ``save_hyperparameters`` stores, so
``VideoLLM.load_from_checkpoint(path)`` works without Hydra; the compressor is built only through
``vlc.compressors.build_compressor``, which refuses any ``_target_`` that is not a compressor.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vlc.backbone.assembled import AssembledBackbone
from vlc.backbone.lora import apply_lora
from vlc.compressors.base import Compressor, build_compressor
from vlc.evaluation.records import gather, summarize
from vlc.model.pipeline import MAX_CANDIDATES, VideoPipeline

log = logging.getLogger(__name__)

COMPONENTS = ("encoder", "projector", "compressor", "llm")
# Keys of checkpoints written before the pipeline existed, and where those tensors live now.
_OLD_PREFIXES = {"encoder.": "pipeline.backbone.encoder.", "projector.": "pipeline.backbone.projector.",
                 "llm.": "pipeline.backbone.llm.", "compressor.": "pipeline.compressor."}
__all__ = ["VideoLLM", "COMPONENTS", "MAX_CANDIDATES", "remap_state_dict"]


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def remap_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's state dict with pre-pipeline keys (``llm.…``) moved to where they live now."""
    out = {}
    for key, value in state.items():
        for old, new in _OLD_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def build_backbone(encoder: dict | None, llm: dict | None, tokenizer: dict | None, projector: dict | None,
                   prompt: dict | None, backbone: dict | None):
    """A pretrained video LLM (``backbone: {family, name_or_path, …}``) or the assembled one."""
    if backbone:
        from vlc.backbone.hf import build_backbone as build_hf

        made = build_hf(**backbone)
        if prompt:  # the model's own template, with the keys the config sets replaced
            made.prompt = made.prompt.replace(**prompt)
        return made
    if encoder is None or llm is None:
        raise ValueError("model: set backbone (a pretrained video LLM) or encoder + llm (an assembled one)")
    return AssembledBackbone(encoder, llm, tokenizer, projector, prompt)


class VideoLLM(L.LightningModule):
    """
    encoder:    ``VisionEncoder`` arguments.             llm:       ``build_llm`` arguments.
    tokenizer:  ``load_tokenizer`` arguments.            projector: ``MLPProjector`` extras.
    backbone:   instead of the four above, a pretrained video LLM: {family, name_or_path, …}
                (``vlc.backbone.hf``).
    compressor: a compressor config (``_target_`` + settings); None = no compression.
    prompt:     ``PromptBuilder`` arguments.
    optim:      lr, weight_decay, betas, warmup_steps or warmup_ratio, min_lr_ratio,
                compression_warmup_steps, component_lr {encoder, projector, compressor, llm} (null: lr).
    freeze:     {component: bool}; frozen components get no gradients and no optimizer state.
    lora:       ``apply_lora`` arguments {enabled, r, alpha, dropout, target_modules}: adapters injected
                into the LLM in place; its base weights are frozen.
    gradient_checkpointing: recompute the LLM's decoder layers (and the encoder's blocks) in backward.
    uncompressed_steps: the first N training steps bypass the compressor (the plain backbone trains on
                all tokens); then compression starts and the compressor's ``on_compression_start``
                re-derives what it copies from the LLM (vst's beacons). Validation always compresses.
                A from-scratch backbone needs it (model=tiny: 500); a pretrained one does not (0).
    native:     the backbone's own frame sampling (e.g. {num_frames: 32}), recorded for data configs.
    """

    def __init__(
        self,
        encoder: dict | None = None,
        llm: dict | None = None,
        tokenizer: dict | None = None,
        projector: dict | None = None,
        compressor: dict | None = None,
        prompt: dict | None = None,
        optim: dict | None = None,
        freeze: dict | None = None,
        max_new_tokens: int = 16,
        lora: dict | None = None,
        gradient_checkpointing: bool = False,
        uncompressed_steps: int = 0,
        backbone: dict | None = None,
        native: dict | None = None,
    ) -> None:
        super().__init__()
        encoder, llm, tokenizer, projector, compressor, prompt, optim, freeze, lora, backbone, native = map(
            _plain, (encoder, llm, tokenizer, projector, compressor, prompt, optim, freeze, lora, backbone, native)
        )
        self.save_hyperparameters(
            dict(encoder=encoder, llm=llm, tokenizer=tokenizer, projector=projector, compressor=compressor,
                 prompt=prompt, optim=optim, freeze=freeze, max_new_tokens=max_new_tokens, lora=lora,
                 gradient_checkpointing=gradient_checkpointing, uncompressed_steps=uncompressed_steps,
                 backbone=backbone, native=native)
        )
        self.uncompressed_steps = int(uncompressed_steps)
        if self.uncompressed_steps < 0:
            raise ValueError(f"model.uncompressed_steps={uncompressed_steps} must be >= 0 (training steps)")
        back = build_backbone(encoder, llm, tokenizer, projector, prompt, backbone)
        # The step at which compression started (-1: not yet), saved so a resumed run knows.
        self.register_buffer("compression_started_at", torch.tensor(-1, dtype=torch.long))
        self.pipeline = VideoPipeline(back, self._build_compressor(compressor, back), max_new_tokens)
        # After bind: vst copies the plain q/k/v weights either way (it reads a LoRA layer's base_layer).
        lora = lora or {}
        apply_lora(back.llm, **lora)
        self.optim_cfg = optim or {}
        for name, frozen in (freeze or {}).items():
            if name not in COMPONENTS:
                raise ValueError(f"freeze.{name}: unknown component; choose from {COMPONENTS}")
            if frozen and name == "llm" and lora.get("enabled"):
                raise ValueError(
                    "model.freeze.llm=true with model.lora.enabled=true would freeze the adapters too; "
                    "set freeze.llm=false (LoRA already freezes the LLM's own weights)"
                )
            if frozen:
                self.component(name).requires_grad_(False)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:
            back.set_grad_checkpointing()
        self.predictions: list[dict[str, Any]] = []
        self._records: list[dict[str, Any]] = []

    @staticmethod
    def _build_compressor(cfg: dict | None, backbone) -> Compressor:
        """The compressor of ``cfg`` for ``backbone``, bound to its LLM. ``dim`` is the width where the
        compressor sits (the encoder's, or the LLM's for "projected"); "projector" ones get ``out_dim``."""
        from vlc.compressors.base import placement

        sits = placement(cfg)
        dim = backbone.hidden_size if sits == "projected" else backbone.vision_dim
        facts = dict(out_dim=backbone.hidden_size) if sits == "projector" else {}
        made = build_compressor(cfg, dim=dim, pixel_std=backbone.pixel_std, question_dim=backbone.hidden_size, **facts)
        made.bind(backbone.llm, backbone.tokenizer)
        # A released checkpoint's own weights for this compressor (Video-XL's beacons for vst).
        state = backbone.pretrained_compressor_state.get(cfg["_target_"]) if cfg else None
        if state is not None:
            made.load_state_dict(state)
        return made

    # ---- parts -------------------------------------------------------------------------------
    @property
    def backbone(self):
        return self.pipeline.backbone

    @property
    def compressor(self) -> Compressor:
        return self.pipeline.compressor

    def component(self, name: str) -> torch.nn.Module:
        """encoder | projector | llm (the backbone's) or compressor."""
        b = self.pipeline.backbone
        return {"encoder": b.encoder, "projector": b.projector, "llm": b.llm, "compressor": self.compressor}[name]

    def with_compressor(self, settings: dict[str, Any]) -> None:
        """Rebuild the compressor with ``settings`` changed (``eval.py +ckpt_compressor.ratio=4``) and
        the trained weights kept: the constructor checks the new settings as it checks any config."""
        import inspect

        from vlc.compressors.base import compressor_class, show

        cfg = dict(self.hparams.get("compressor") or {})
        if not cfg:
            raise ValueError("ckpt_compressor: this checkpoint has no compressor to change")
        params = inspect.signature(compressor_class(cfg["_target_"])).parameters
        for key, value in settings.items():  # a switch stays a switch: compress=1 is a typo, not True
            default = cfg.get(key, params[key].default if key in params else None)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"compressor.{key}={show(value)}: a true/false setting")
        made = self._build_compressor({**cfg, **settings}, self.backbone)
        missing, unexpected = made.load_state_dict(self.compressor.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"ckpt_compressor {settings}: the rebuilt compressor's weights differ "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]}); change only settings "
                             f"that keep the parameters")
        self.pipeline.compressor = made.to(self.device)
        self.hparams["compressor"] = {**cfg, **settings}
        log.info("ckpt_compressor: %s rebuilt with %s", type(made).__name__, settings)

    @property
    def compressing(self) -> bool:
        """False only inside the uncompressed phase of training (model.uncompressed_steps)."""
        return not (self.training and self.global_step < self.uncompressed_steps)

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: dict) -> Tensor:
        """The answer loss of a batch (cross entropy on answer tokens only)."""
        one_pass = self.gradient_checkpointing and self.training
        return self.pipeline.loss(batch, compress=self.compressing, one_pass=one_pass)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = remap_state_dict(checkpoint["state_dict"])
        # Checkpoints written before compression_started_at existed load as "not started yet".
        checkpoint["state_dict"].setdefault("compression_started_at", torch.tensor(-1, dtype=torch.long))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """End of the uncompressed phase: the compressor re-derives what it copies from the LLM as
        trained so far (vst's beacon q/k/v and embedding), once."""
        if self.uncompressed_steps and self.global_step >= self.uncompressed_steps and int(self.compression_started_at) < 0:
            self.compressor.on_compression_start(self.backbone.llm, self.backbone.tokenizer)
            self.compression_started_at.fill_(self.global_step)
            log.info("step %d: uncompressed phase over, %s starts compressing",
                     self.global_step, type(self.compressor).__name__)
        start = max(0, int(self.compression_started_at)) if self.uncompressed_steps else 0
        self.compressor.on_train_step(max(0, self.global_step - start))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    # ---- evaluation --------------------------------------------------------------------------
    def _eval_step(self, batch: dict) -> None:
        if batch["ids"]:  # a batch of only unreadable items (data.on_error=skip) has nothing to score
            self._records += self.pipeline.evaluate(batch)

    def _eval_epoch_end(self, stage: str) -> None:
        records = gather(self._records)
        self._records = []
        self.predictions = records
        if not records:
            return
        metrics = summarize(records, prefix=stage)
        acc = metrics.pop(f"{stage}/acc")
        self.log(f"{stage}/acc", float(acc), prog_bar=True, sync_dist=False)
        self.log_dict({k: float(v) for k, v in metrics.items() if not math.isnan(float(v))}, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._records = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ---- optimisation ------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """One AdamW group per component with trainable parameters, at ``optim.component_lr.<name>``
        (null: ``optim.lr``). LoRA adapters belong to the llm group."""
        cfg = self.optim_cfg
        lr = float(cfg.get("lr", 1e-3))
        component_lr = cfg.get("component_lr") or {}
        unknown = set(component_lr) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"optim.component_lr: unknown component(s) {sorted(unknown)}; choose from {COMPONENTS}")
        groups, seen = [], set()
        for name in COMPONENTS:
            # A parameter shared by two components (a backbone whose projector is part of its LLM
            # module tree) belongs to the first that lists it.
            params = [p for p in self.component(name).parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                own = component_lr.get(name)
                groups.append(dict(params=params, lr=float(lr if own is None else own), name=name))
        if not groups:
            raise ValueError("every component is frozen: nothing to train (see model.freeze and model.lora)")
        return groups

    def configure_optimizers(self):
        cfg = self.optim_cfg
        opt = torch.optim.AdamW(self.param_groups(), lr=float(cfg.get("lr", 1e-3)),
                                weight_decay=float(cfg.get("weight_decay", 0.0)),
                                betas=tuple(cfg.get("betas", (0.9, 0.999))))
        total = self._trainer.estimated_stepping_batches if self._trainer is not None else 0
        total = int(total) if total and math.isfinite(total) else 0
        if cfg.get("warmup_ratio") is not None:  # Video-XL / LLaVA: warmup_ratio 0.03 of all steps
            warmup = int(math.ceil(float(cfg["warmup_ratio"]) * total))
        else:
            warmup = int(cfg.get("warmup_steps") or 0)
        min_ratio = float(cfg.get("min_lr_ratio", 0.1))
        # optim.compression_warmup_steps: when the compressor starts (model.uncompressed_steps) the
        # loss jumps, and AdamW's moments, still those of the converged plain phase, need tens of
        # steps to catch up. A second linear warm-up from the switch, on top of the schedule,
        # eases the LLM into reading the compressed context.
        switch = self.uncompressed_steps if 0 < self.uncompressed_steps < (total or math.inf) else 0
        rewarm = int(cfg.get("compression_warmup_steps") or 0) if switch else 0

        def schedule(step: int) -> float:  # linear warm-up, then cosine decay to min_lr_ratio
            factor = min(1.0, (step - switch + 1) / rewarm) if rewarm and step >= switch else 1.0
            if warmup and step < warmup:
                return factor * (step + 1) / warmup
            if not total or total <= warmup:
                return factor
            progress = min(1.0, (step - warmup) / (total - warmup))
            return factor * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return dict(optimizer=opt, lr_scheduler=dict(scheduler=sched, interval="step"))
