"""Evaluation without a Trainer: run a model over a loader, keep one record per sample, and turn the
records into the metrics of ``metrics.json``.

Every record carries the sample's answer and prediction *and* its cost, as ``VideoLLM.evaluate_batch``
measures it for every compressor (see ``vlc.evaluation.efficiency.measure_context``), so the same
records give accuracy per task, per NIAH cell, and latency percentiles.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from vlc.data.video import LazyFrames
from vlc.evaluation.efficiency import measure_context
from vlc.evaluation.grounding import THRESHOLDS
from vlc.model.prefill import greedy_generate

# Per-sample cost fields of a record (the names evaluate_batch returns).
COST_KEYS = ("visual_tokens", "kv_tokens", "kv_bytes", "encoder_ms", "prefill_ms", "context_ms", "peak_mem_mb")
LATENCY_KEYS = ("encoder_ms", "prefill_ms", "context_ms")
PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def eval_device(accelerator: str = "cpu") -> torch.device:
    """The device of ``trainer.accelerator``: cpu, gpu/cuda (CUDA required) or auto."""
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("gpu", "cuda", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if accelerator == "auto":
            return torch.device("cpu")
        raise RuntimeError(f"trainer.accelerator={accelerator!r} but CUDA is not available; use trainer=cpu")
    raise ValueError(f"trainer.accelerator={accelerator!r}: evaluation runs on cpu, gpu (cuda) or auto")


def autocast(device: torch.device, precision: str | int = "32-true"):
    """The autocast context of a Lightning precision string (32-true, bf16-mixed, 16-mixed)."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: evaluation supports {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    # Tensors, and LazyFrames (lazily decoded pixels, which decode onto ``device``).
    return {k: v.to(device) if isinstance(v, (torch.Tensor, LazyFrames)) else v for k, v in batch.items()}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, spaces collapsed (SQuAD-style exact match)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def generate_batch(model: Any, batch: dict) -> dict[str, Any]:
    """Open-ended samples (no candidates, e.g. LLaVA-style JSON): the context is measured as
    ``evaluate_batch`` measures it, then the answer is generated greedily from it; a prediction is
    correct when it equals the reference after ``normalize_answer``."""
    ctx, cost = measure_context(model, batch)
    q = model.prompt.question_batch(batch["questions"], [None] * len(batch["ids"]))
    ids = greedy_generate(model.llm, ctx, model.embed(q.ids), q.mask.to(model.device), model.max_new_tokens,
                          model.tokenizer.eos_token_id)
    texts = [t.strip() for t in model.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    correct = [normalize_answer(t) == normalize_answer(a) for t, a in zip(texts, batch["answers"])]
    return dict(texts=texts, correct=correct, **cost)


@torch.no_grad()
def predict(
    model: Any, loader: Iterable[dict], device: torch.device, precision: str | int = "32-true"
) -> list[dict[str, Any]]:
    """One record per sample: id, task, question, candidates, answer, prediction, correct, scores,
    meta, frames, and the cost fields of ``COST_KEYS`` (latencies are the batch's per-sample share;
    ``peak_mem_mb`` / ``base_mem_mb`` are the batch's). Multiple choice is scored by
    ``VideoLLM.evaluate_batch``; samples without candidates by greedy generation (``generate_batch``)."""
    model.eval().to(device)
    records: list[dict[str, Any]] = []
    for batch in loader:
        batch = to_device(batch, device)
        open_ended = any(c is None for c in batch["candidates"])
        with autocast(device, precision):
            out = generate_batch(model, batch) if open_ended else model.evaluate_batch(batch)
            # grounding samples (task "ground") also get a generated span, scored by IoU
            spans = model._ground_step(batch, "eval") if hasattr(model, "_ground_step") and not open_ended else {}
        B = len(batch["ids"])
        frames = batch["frame_mask"].sum(1)
        for i in range(B):
            cands = batch["candidates"][i]
            if open_ended:
                answer = dict(prediction=out["texts"][i], correct=bool(out["correct"][i]), scores=[])
            else:
                pred = int(out["pred"][i])
                answer = dict(prediction=cands[pred], pred_index=pred, correct=bool(pred == int(out["target"][i])),
                              scores=[round(float(s), 4) for s in out["scores"][i][: len(cands)]])
            records.append(
                dict(
                    id=batch["ids"][i], task=batch["tasks"][i] or "all", question=batch["questions"][i],
                    candidates=cands, answer=batch["answers"][i], **answer,
                    meta=batch["meta"][i], frames=int(frames[i]), batch_size=B,
                    visual_tokens=int(out["visual_tokens"][i]), kv_tokens=int(out["kv_tokens"][i]),
                    kv_bytes=int(out["kv_bytes"][i]),
                    encoder_ms=round(float(out["encoder_ms"]), 3), prefill_ms=round(float(out["prefill_ms"]), 3),
                    context_ms=round(float(out["context_ms"]), 3), peak_mem_mb=round(float(out["peak_mem_mb"]), 2),
                    base_mem_mb=round(float(out.get("base_mem_mb", math.nan)), 2),
                    **spans.get(i, {}),
                )
            )
    return records


def percentile(values: Iterable[float], q: float) -> float:
    values = list(values)
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan


def cost_summary(records: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    """Mean of every cost field over samples; p50/p90 of the latencies; max of the peak memory."""
    out: dict[str, float] = {}
    if not records:
        return out
    for key in COST_KEYS:
        values = [r[key] for r in records]
        out[f"{prefix}/{key}"] = float(np.mean(values))
        if key in LATENCY_KEYS:
            out[f"{prefix}/{key}_p50"] = percentile(values, 50)
            out[f"{prefix}/{key}_p90"] = percentile(values, 90)
    out[f"{prefix}/peak_mem_mb_max"] = float(max(r["peak_mem_mb"] for r in records))
    return out


def summarize_records(records: list[dict[str, Any]], prefix: str = "val") -> dict[str, float | int]:
    """Overall accuracy, per-task accuracy (``<prefix>/acc_<task>``, ``<prefix>/n_<task>``), the
    mean of the per-task accuracies (MVBench's headline when tasks differ in size) and the costs."""
    if not records:
        raise ValueError("no samples were evaluated: the split is empty (check the data config's files)")
    by_task: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r["correct"])
    out: dict[str, float | int] = {
        f"{prefix}/acc": float(np.mean([r["correct"] for r in records])),
        f"{prefix}/n": len(records),
    }
    for task, correct in sorted(by_task.items()):
        out[f"{prefix}/acc_{task}"] = float(np.mean(correct))
        out[f"{prefix}/n_{task}"] = len(correct)
    out[f"{prefix}/acc_task_mean"] = float(np.mean([np.mean(c) for c in by_task.values()]))
    grounded = [r for r in records if "iou" in r]  # the same keys as VideoLLM's validation logs
    if grounded:
        ious = np.asarray([r["iou"] for r in grounded], dtype=np.float64)
        out[f"{prefix}/miou"] = float(ious.mean())
        for t in THRESHOLDS:
            out[f"{prefix}/r1@{t}"] = float((ious >= t).mean())
        out[f"{prefix}/span_invalid"] = float(np.mean([r.get("pred_span") is None for r in grounded]))
    out.update(cost_summary(records, prefix))
    return out
