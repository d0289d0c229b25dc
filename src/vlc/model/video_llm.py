"""``VideoLLM``: encoder → compressor → projector → prompt assembly → LLM prefill → continuation.

One LightningModule for every compressor. The submodules are built from plain config dicts that
``save_hyperparameters`` stores, so ``VideoLLM.load_from_checkpoint(path)`` works without Hydra.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from vlc.backbone.encoder import VisionEncoder
from vlc.backbone.llm import build_llm, enable_activation_checkpointing
from vlc.backbone.lora import apply_lora
from vlc.backbone.projector import MLPProjector
from vlc.backbone.tokenizer import load_tokenizer
from vlc.compressors import build_compressor
from vlc.data.video import LazyFrames, materialize
from vlc.evaluation.efficiency import Stopwatch, measure_context
from vlc.evaluation.grounding import GROUND_TASK, TemporalGroundingIoU, parse_span, span_iou
from vlc.model.prefill import (
    answer_loss,
    continue_from,
    default_prefill,
    greedy_generate,
    left_pad,
    positions_from_mask,
    repeat_context,
    token_logprobs,
)
from vlc.model.prompt import PromptBuilder
from vlc.tokens import Context

log = logging.getLogger(__name__)

COMPONENTS = ("encoder", "projector", "compressor", "llm")
MAX_CANDIDATES = 26


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class VideoLLM(L.LightningModule):
    """
    encoder:    ``VisionEncoder`` arguments.             llm:       ``build_llm`` arguments.
    tokenizer:  ``load_tokenizer`` arguments.            projector: ``MLPProjector`` extras.
    compressor: a compressor config (``_target_``, ``_partial_``); None = no compression.
    prompt:     ``PromptBuilder`` arguments.
    optim:      lr, weight_decay, betas, warmup_steps or warmup_ratio, min_lr_ratio,
                component_lr {encoder, projector, compressor, llm} (null: lr).
    freeze:     {component: bool}; frozen components get no gradients and no optimizer state.
    lora:       ``apply_lora`` arguments {enabled, r, alpha, dropout, target_modules}: adapters injected
                into the LLM in place (``self.llm`` stays the HF model); its base weights are frozen.
    gradient_checkpointing: recompute the LLM's decoder layers (and the encoder's blocks) in backward.
    uncompressed_steps: the first N training steps bypass the compressor (the plain backbone trains on
                all tokens); then compression starts, and a compressor with ``on_compression_start``
                re-derives what it copies from the LLM (vst's beacons). Validation always compresses.
                A from-scratch backbone needs it (model=tiny: 500); a pretrained one does not (0).
    """

    def __init__(
        self,
        encoder: dict,
        llm: dict,
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
    ) -> None:
        super().__init__()
        encoder, llm, tokenizer, projector, compressor, prompt, optim, freeze, lora = map(
            _plain, (encoder, llm, tokenizer, projector, compressor, prompt, optim, freeze, lora)
        )
        self.save_hyperparameters(
            dict(encoder=encoder, llm=llm, tokenizer=tokenizer, projector=projector, compressor=compressor,
                 prompt=prompt, optim=optim, freeze=freeze, max_new_tokens=max_new_tokens, lora=lora,
                 gradient_checkpointing=gradient_checkpointing, uncompressed_steps=uncompressed_steps)
        )
        self.tokenizer = load_tokenizer(**(tokenizer or {}))
        self.encoder = VisionEncoder(**encoder)
        self.llm = build_llm(**llm, vocab_size=len(self.tokenizer))
        self.projector = MLPProjector(self.encoder.dim, self.llm.config.hidden_size, **(projector or {}))
        self.uncompressed_steps = int(uncompressed_steps)
        if self.uncompressed_steps < 0:
            raise ValueError(f"model.uncompressed_steps={uncompressed_steps} must be >= 0 (training steps)")
        # The step at which compression started (-1: not yet), saved so a resumed run knows.
        self.register_buffer("compression_started_at", torch.tensor(-1, dtype=torch.long))
        self.compressor = build_compressor(
            compressor, self.encoder.dim,
            pixel_std=tuple(self.encoder.std.flatten().tolist()), question_dim=self.llm.config.hidden_size,
        )
        if hasattr(self.compressor, "attach"):
            self.compressor.attach(self.llm, self.tokenizer)
        # After attach: vst copies the plain q/k/v weights either way (it reads a LoRA layer's base_layer).
        lora = lora or {}
        apply_lora(self.llm, **lora)
        self.prompt = PromptBuilder(self.tokenizer, **(prompt or {}))
        self.optim_cfg = optim or {}
        self.max_new_tokens = max_new_tokens
        for name, frozen in (freeze or {}).items():
            if name not in COMPONENTS:
                raise ValueError(f"freeze.{name}: unknown component; choose from {COMPONENTS}")
            if frozen and name == "llm" and lora.get("enabled"):
                raise ValueError(
                    "model.freeze.llm=true with model.lora.enabled=true would freeze the adapters too; "
                    "set freeze.llm=false (LoRA already freezes the LLM's own weights)"
                )
            if frozen:
                getattr(self, name).requires_grad_(False)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:
            enable_activation_checkpointing(self.llm)
            self.encoder.set_grad_checkpointing(True)
        self.val_acc = MulticlassAccuracy(num_classes=MAX_CANDIDATES, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=MAX_CANDIDATES, average="micro")
        self._task_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.predictions: list[dict[str, Any]] = []

    # ---- context -----------------------------------------------------------------------------
    def embed(self, ids: Tensor) -> Tensor:
        return self.llm.get_input_embeddings()(ids.to(self.device))

    def _prefix(self, batch_size: int) -> tuple[Tensor, Tensor]:
        ids = torch.tensor(self.prompt.prefix_ids(), device=self.device)
        sink = self.embed(ids)[None].expand(batch_size, -1, -1)  # (B, S, D)
        return sink, torch.ones(sink.shape[:2], dtype=torch.long, device=self.device)

    def question_embeds(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The question as the LLM embeds it (B, Lq, D) + mask, for compressors that read the question."""
        q = self.prompt.question_batch(batch["questions"], batch["candidates"])
        return self.embed(q.ids), q.mask.to(self.device)

    @property
    def compressing(self) -> bool:
        """False only inside the uncompressed phase of training (model.uncompressed_steps)."""
        return not (self.training and self.global_step < self.uncompressed_steps)

    def _compress(self, ft, norm_pixels: Tensor, batch: dict):
        if not self.compressing:
            return ft
        # Only question-aware compressors (uses_question = True) see the question; by default the
        # context is built from the video alone, as in Video-XL.
        if getattr(self.compressor, "uses_question", False):
            return self.compressor(ft, norm_pixels, question=self.question_embeds(batch))
        return self.compressor(ft, norm_pixels)

    def _visual_stream(self, batch: dict, frames_per_chunk: int, watch: Stopwatch) -> Iterator[tuple[Tensor, Tensor]]:
        """Encode, compress and project frames a chunk at a time: only one chunk's activations live."""
        pixels, frame_mask, times = batch["pixels"], batch["frame_mask"], batch["times"]
        for t0 in range(0, pixels.shape[1], frames_per_chunk):
            sl = slice(t0, t0 + frames_per_chunk)
            with watch.span("encoder"):
                ft, norm = self.encoder(pixels[:, sl], frame_mask[:, sl], times[:, sl])
                ft = self._compress(ft, norm, batch)
            self._visual_count = self._visual_count + ft.num_tokens()
            yield self.prompt.visual_span(self.projector(ft.tokens), ft, self.llm.get_input_embeddings())

    def encode_context(self, batch: dict, watch: Stopwatch | None = None) -> Context:
        """pixels → Context (KV cache of prefix + visual)."""
        watch = watch or Stopwatch(self.device)
        B = batch["pixels"].shape[0]
        sink, sink_mask = self._prefix(B)
        in_llm = hasattr(self.compressor, "prefill") and self.compressing
        if in_llm and getattr(self.compressor, "streaming", False):
            window = int(getattr(self.compressor, "window", self.encoder.tokens_per_frame))
            self._visual_count = torch.zeros(B, dtype=torch.long, device=self.device)
            stream = self._visual_stream(batch, max(1, window // self.encoder.tokens_per_frame), watch)
            ctx = self.compressor.prefill(self.llm, sink, sink_mask, stream)
            ctx.visual_tokens = self._visual_count
            return ctx
        with watch.span("encoder"):  # lazily decoded frames are decoded here, all at once
            ft, norm = self.encoder(materialize(batch["pixels"]), batch["frame_mask"], batch["times"])
            ft = self._compress(ft, norm, batch)
        vis, vis_mask = self.prompt.visual_span(self.projector(ft.tokens), ft, self.llm.get_input_embeddings())
        if in_llm:
            ctx = self.compressor.prefill(self.llm, sink, sink_mask, [(vis, vis_mask)])
            ctx.visual_tokens = ft.num_tokens()
            return ctx
        seqs = [torch.cat([sink[b], vis[b][vis_mask[b].bool()]]) for b in range(B)]
        embeds, mask = left_pad(seqs)
        return default_prefill(self.llm, embeds, mask, ft.num_tokens())

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: dict) -> Tensor:
        """The answer loss of a batch (cross entropy on answer tokens only)."""
        text = self.prompt.training_batch(batch["questions"], batch["candidates"], batch["answers"])
        in_llm = hasattr(self.compressor, "prefill") and self.compressing
        if self.gradient_checkpointing and self.training and not in_llm:
            return self._one_pass_loss(batch, text)
        ctx = self.encode_context(batch)
        # Checkpointed HF layers drop past_key_values (a cache written twice would be wrong on the
        # recompute), which would cut the text off its context. vst checkpoints its own window loop;
        # the text after it is a few dozen tokens, so it runs un-checkpointed.
        with _layer_checkpointing_off(self.llm):
            logits = continue_from(self.llm, ctx, self.embed(text.ids), text.mask.to(self.device))
        return answer_loss(logits, text.labels.to(self.device))

    def _one_pass_loss(self, batch: dict, text) -> Tensor:
        """The same loss as context + continuation (tests/test_model.py pins the two equal), as one
        cache-free forward over [prefix | visual | question + answer], so every layer can be checkpointed."""
        B = batch["pixels"].shape[0]
        sink, _ = self._prefix(B)
        ft, norm = self.encoder(materialize(batch["pixels"]), batch["frame_mask"], batch["times"])
        ft = self._compress(ft, norm, batch)
        vis, vis_mask = self.prompt.visual_span(self.projector(ft.tokens), ft, self.llm.get_input_embeddings())
        context, context_mask = left_pad([torch.cat([sink[b], vis[b][vis_mask[b].bool()]]) for b in range(B)])
        embeds = torch.cat([context, self.embed(text.ids).to(context.dtype)], 1)  # (B, Lc + Lt, D)
        mask = torch.cat([context_mask, text.mask.to(self.device)], 1)
        logits = self.llm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask),
            use_cache=False, logits_to_keep=text.ids.shape[1],
        ).logits  # (B, Lt, V): the text positions only
        return answer_loss(logits, text.labels.to(self.device))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before compression_started_at existed load as "not started yet".
        checkpoint["state_dict"].setdefault("compression_started_at", torch.tensor(-1, dtype=torch.long))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """End of the uncompressed phase: compressors that derive parameters from the LLM (vst copies
        its beacon q/k/v and embedding) re-derive them from the LLM as trained so far, once."""
        if self.uncompressed_steps and self.global_step >= self.uncompressed_steps and int(self.compression_started_at) < 0:
            hook = getattr(self.compressor, "on_compression_start", None)
            if hook is not None:
                hook(self.llm, self.tokenizer)
            self.compression_started_at.fill_(self.global_step)
            log.info("step %d: uncompressed phase over, %s starts compressing",
                     self.global_step, type(self.compressor).__name__)
        if hasattr(self.compressor, "compressed_steps"):  # vst's ratio curriculum counts these
            start = max(0, int(self.compression_started_at)) if self.uncompressed_steps else 0
            self.compressor.compressed_steps = max(0, self.global_step - start)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    # ---- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def score_candidates(self, ctx: Context, questions: list[str], candidates: list[list[str]]) -> Tensor:
        """Log-likelihood of every option's text after the question → (B, K); -inf pads missing options."""
        B = len(questions)
        k = max(len(c) for c in candidates)
        if k > MAX_CANDIDATES:
            raise ValueError(f"a sample has {k} candidates; at most {MAX_CANDIDATES} are supported")
        q = self.prompt.question_batch(questions, candidates)
        q_mask = q.mask.to(self.device)
        logits = continue_from(self.llm, ctx, self.embed(q.ids), q_mask)
        first = logits[torch.arange(B, device=self.device), q_mask.sum(1) - 1]  # (B, V) predicts option token 0
        ctx_k = repeat_context(ctx, k)
        c = self.prompt.candidate_batch(candidates, k)
        c_ids, c_mask = c.ids.to(self.device), c.mask.to(self.device)
        logits_c = continue_from(self.llm, ctx_k, self.embed(c_ids), c_mask)  # (B·k, Lc, V)
        full = torch.cat([first.repeat_interleave(k, 0)[:, None], logits_c[:, :-1]], 1)
        targets = c_ids.masked_fill(c_mask == 0, -100)
        scores = token_logprobs(full, targets).sum(1).view(B, k)
        valid = torch.tensor([[j < len(cs) for j in range(k)] for cs in candidates], device=self.device)
        return scores.masked_fill(~valid, -math.inf)

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers to each sample's question, decoded to text."""
        ctx = self.encode_context(batch)
        q = self.prompt.question_batch(batch["questions"], batch["candidates"])
        out = greedy_generate(
            self.llm, ctx, self.embed(q.ids), q.mask.to(self.device),
            max_new_tokens or self.max_new_tokens, self.tokenizer.eos_token_id,
        )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def evaluate_batch(self, batch: dict) -> dict[str, Any]:
        """Accuracy and cost of one batch, measured the same way for every compressor."""
        ctx, cost = measure_context(self, batch)  # the accounting shared with vlc-bench
        scores = self.score_candidates(ctx, batch["questions"], batch["candidates"])
        pred = scores.argmax(1)
        target = torch.tensor([c.index(a) for c, a in zip(batch["candidates"], batch["answers"])], device=self.device)
        return dict(pred=pred, target=target, scores=scores, **cost)

    def _grounding_metric(self, stage: str) -> TemporalGroundingIoU:
        """The stage's span metric, made on first use. It is kept out of the module tree (a plain
        dict): it has no parameters, only epoch-long sums, so checkpoints and models that never see
        grounding data are unchanged by it."""
        if not hasattr(self, "_grounding_metrics"):
            self._grounding_metrics: dict[str, TemporalGroundingIoU] = {}
        if stage not in self._grounding_metrics:
            self._grounding_metrics[stage] = TemporalGroundingIoU()
        return self._grounding_metrics[stage].to(self.device)

    def _ground_step(self, batch: dict, stage: str) -> dict[int, dict[str, Any]]:
        """Greedy answers for the batch's grounding samples (task ``ground``), read as spans and scored
        against ``meta["span"]``; returns their extra prediction fields by sample index. Samples of
        other tasks are not generated for, so they cost nothing more than before."""
        rows = [i for i, task in enumerate(batch["tasks"]) if task == GROUND_TASK]
        if not rows:
            return {}
        targets = []
        for i in rows:
            span = (batch["meta"][i] or {}).get("span") if "meta" in batch else None
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                raise ValueError(
                    f"sample {batch['ids'][i]!r} has task {GROUND_TASK!r} but meta['span']={span!r}; "
                    f"expected [start, end] in seconds (vlc.data.synthetic.make_ground_frames writes it)"
                )
            targets.append([float(x) for x in span])
        texts = [t.strip() for t in self.generate(batch if len(rows) == len(batch["ids"]) else _select(batch, rows))]
        spans = [parse_span(t) for t in texts]
        pred = torch.tensor([s or (math.nan, math.nan) for s in spans], dtype=torch.float32, device=self.device)
        target = torch.tensor(targets, dtype=torch.float32, device=self.device)
        if stage in ("val", "test"):  # Lightning's epochs read the metric; eval.py sums the records itself
            self._grounding_metric(stage).update(pred, target)
        ious = span_iou(pred, target).tolist()
        return {i: dict(generated=text, pred_span=list(span) if span else None, iou=round(iou, 4))
                for i, text, span, iou in zip(rows, texts, spans, ious)}

    def _eval_step(self, batch: dict, stage: str) -> None:
        out = self.evaluate_batch(batch)
        B = len(batch["ids"])
        # Per-video choices a compressor reports (budget: the pooling factor it picked for each sample).
        strides = list(getattr(self.compressor, "last_strides", None) or [])
        chosen = [dict(pool_stride=int(s)) for s in strides] if len(strides) == B else [{}] * B
        if len(strides) == B:
            self.log(f"{stage}/pool_stride", float(sum(strides)) / B, on_epoch=True, batch_size=B, sync_dist=True)
        grounded = self._ground_step(batch, stage)
        acc = self.val_acc if stage == "val" else self.test_acc
        acc(out["pred"], out["target"])
        self.log(f"{stage}/acc", acc, prog_bar=True, on_epoch=True, batch_size=B)
        # sync_dist: under DDP each rank sees its share of the split; the epoch value is the mean over all.
        for key in ("visual_tokens", "kv_tokens", "kv_bytes"):
            self.log(f"{stage}/{key}", out[key].mean(), on_epoch=True, batch_size=B, sync_dist=True)
        for key in ("encoder_ms", "prefill_ms", "context_ms", "peak_mem_mb"):
            self.log(f"{stage}/{key}", float(out[key]), on_epoch=True, batch_size=B, sync_dist=True)
        for i in range(B):
            correct = bool(out["pred"][i] == out["target"][i])
            counts = self._task_counts[batch["tasks"][i] or "all"]
            counts[0] += correct
            counts[1] += 1
            self.predictions.append(
                dict(id=batch["ids"][i], task=batch["tasks"][i], question=batch["questions"][i],
                     candidates=batch["candidates"][i], answer=batch["answers"][i],
                     prediction=batch["candidates"][i][int(out["pred"][i])], correct=correct,
                     scores=[round(float(s), 4) for s in out["scores"][i][: len(batch["candidates"][i])]],
                     meta=batch["meta"][i] if "meta" in batch else {},
                     visual_tokens=int(out["visual_tokens"][i]), kv_tokens=int(out["kv_tokens"][i]),
                     **chosen[i], **grounded.get(i, {}))
            )

    def _eval_epoch_end(self, stage: str) -> None:
        counts = dict(self._task_counts)
        if _distributed(self.trainer):  # every rank gets all ranks' counts and predictions
            counts = defaultdict(lambda: [0, 0])
            for rank_counts in _all_gather_objects(dict(self._task_counts)):
                for task, (right, total) in rank_counts.items():
                    counts[task][0] += right
                    counts[task][1] += total
            # DistributedSampler pads a split to a multiple of the world size by repeating samples: keep one of each.
            seen = {}
            for rank_predictions in _all_gather_objects(self.predictions):
                for p in rank_predictions:
                    seen.setdefault(p["id"], p)
            self.predictions = list(seen.values())
        if len(counts) > 1:
            for task, (right, total) in sorted(counts.items()):
                self.log(f"{stage}/acc_{task}", right / max(total, 1))
        # counts are every rank's by now, so all ranks agree on this test: compute() syncs across ranks.
        if counts.get(GROUND_TASK):
            metric = self._grounding_metric(stage)
            for key, value in metric.compute().items():
                self.log(f"{stage}/{'span_invalid' if key == 'invalid' else key}", float(value))
            metric.reset()
        self._task_counts.clear()

    def on_validation_epoch_start(self) -> None:
        self.predictions = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

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
        groups = []
        for name in COMPONENTS:
            params = [p for p in getattr(self, name).parameters() if p.requires_grad]
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


def _distributed(trainer) -> bool:
    return trainer is not None and trainer.world_size > 1 and torch.distributed.is_available() \
        and torch.distributed.is_initialized()


def _all_gather_objects(obj: Any) -> list[Any]:
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _select(batch: dict, rows: list[int]) -> dict:
    """Samples ``rows`` of a collated batch: per-sample tensors and lists are indexed, the rest kept."""
    B = len(batch["ids"])
    out = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() and value.shape[0] == B:
            out[key] = value[torch.tensor(rows, device=value.device)]
        elif isinstance(value, LazyFrames):
            out[key] = LazyFrames([value.clips[i] for i in rows], value.device)
        elif isinstance(value, list) and len(value) == B and key != "skipped":  # skipped: not per sample
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


@contextmanager
def _layer_checkpointing_off(llm):
    """Temporarily clear the ``gradient_checkpointing`` flag of every decoder layer that has it."""
    layers = [m for m in llm.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True
