"""One record per evaluated sample, and the metrics every evaluation derives from records.

Train-time validation, ``eval.py``, NIAH and the lmms-eval model all evaluate through
``VideoPipeline.evaluate`` (which calls ``answer_records``) and summarise through
``summarize``: one schema, one set of aggregates. A record holds

    id, task, question, candidates, answer, prediction, correct, scores, meta, frames, batch_size
    pred_index                      (multiple choice: the option picked)
    f1                              (open-ended: token F1 of the generated answer; correct = exact match)
    generated, pred_span, iou       (task "ground": the generated span and its IoU with meta["span"])
    <the compressor's report>       (e.g. budget's pool_stride)
    visual_tokens, kv_tokens, kv_bytes                 (per sample)
    encoder_ms, prefill_ms, context_ms                 (the batch's time / B)
    peak_mem_mb, base_mem_mb                           (the batch's)

Under DDP each rank holds its share; ``gather`` joins them (a DistributedSampler pads a split by
repeating samples: one record per id is kept) before ``summarize``, so every aggregate is over the
whole split. Aggregates are computed from the joined records rather than synced per rank, because
per-task figures are keyed by task names that need not be the same on every rank.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

from vlc.evaluation.grounding import GROUND_TASK, THRESHOLDS, parse_span, span_iou

# The fields of a record that are not a compressor's report (every other number is one: see summarize).
FIELDS = {"id", "task", "question", "candidates", "answer", "prediction", "pred_index", "correct", "scores", "meta",
          "frames", "batch_size", "generated", "pred_span", "iou", "f1", "visual_tokens", "kv_tokens", "kv_bytes",
          "encoder_ms", "prefill_ms", "context_ms", "peak_mem_mb", "base_mem_mb"}
# Per-sample cost fields of a record (measure_context's names).
COST_KEYS = ("visual_tokens", "kv_tokens", "kv_bytes", "encoder_ms", "prefill_ms", "context_ms", "peak_mem_mb")
LATENCY_KEYS = ("encoder_ms", "prefill_ms", "context_ms")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, spaces collapsed (SQuAD-style exact match)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 of two answers after ``normalize_answer``: partial credit for open-ended text."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum(min(pred.count(w), ref.count(w)) for w in set(pred))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def select(batch: dict, rows: list[int]) -> dict:
    """Samples ``rows`` of a collated batch: per-sample tensors and lists are indexed, the rest kept."""
    from vlc.data.video import LazyFrames

    B = len(batch["ids"])
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == B:
            out[key] = value[torch.tensor(rows, device=value.device)]
        elif isinstance(value, LazyFrames):
            out[key] = LazyFrames([value.clips[i] for i in rows], value.device)
        elif isinstance(value, list) and len(value) == B and key != "skipped":  # skipped: not per sample
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


def answer_records(pipeline: Any, batch: dict, ctx: Any, cost: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of one batch whose context ``ctx`` was built at ``cost`` (``measure_context``)."""
    B = len(batch["ids"])
    report = pipeline.compressor.report()  # right after the forward that built ctx
    open_ended = any(c is None for c in batch["candidates"])
    if open_ended:  # no options to score (LLaVA-style JSON): the answer is generated
        texts = [t.strip() for t in pipeline.generate_from(ctx, batch["questions"], batch["candidates"])]
        answers = [dict(prediction=t, correct=normalize_answer(t) == normalize_answer(a), f1=round(token_f1(t, a), 4),
                        scores=[]) for t, a in zip(texts, batch["answers"])]
    else:
        scores = pipeline.score_candidates(ctx, batch["questions"], batch["candidates"])
        picks = scores.argmax(1).tolist()
        answers = []
        for i, (cands, pick) in enumerate(zip(batch["candidates"], picks)):
            target = cands.index(batch["answers"][i])
            answers.append(dict(prediction=cands[pick], pred_index=pick, correct=pick == target,
                                scores=[round(float(s), 4) for s in scores[i][: len(cands)]]))
    grounded = {} if open_ended else ground_fields(pipeline, batch)
    frames = batch["frame_mask"].sum(1).tolist()
    records = []
    for i in range(B):
        records.append(dict(
            id=batch["ids"][i], task=batch["tasks"][i] or "all", question=batch["questions"][i],
            candidates=batch["candidates"][i], answer=batch["answers"][i], **answers[i],
            meta=batch["meta"][i] if "meta" in batch else {}, frames=int(frames[i]), batch_size=B,
            **{key: values[i] for key, values in report.items() if len(values) == B},
            **grounded.get(i, {}),
            visual_tokens=int(cost["visual_tokens"][i]), kv_tokens=int(cost["kv_tokens"][i]),
            kv_bytes=int(cost["kv_bytes"][i]),
            encoder_ms=round(float(cost["encoder_ms"]), 3), prefill_ms=round(float(cost["prefill_ms"]), 3),
            context_ms=round(float(cost["context_ms"]), 3), peak_mem_mb=round(float(cost["peak_mem_mb"]), 2),
            base_mem_mb=round(float(cost.get("base_mem_mb", math.nan)), 2),
        ))
    return records


def ground_fields(pipeline: Any, batch: dict) -> dict[int, dict[str, Any]]:
    """Greedy answers for the batch's grounding samples (task ``ground``), read as spans and scored
    against ``meta["span"]``, by sample index. Other samples are not generated for."""
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
    sub = batch if len(rows) == len(batch["ids"]) else select(batch, rows)
    texts = [t.strip() for t in pipeline.generate(sub)]
    spans = [parse_span(t) for t in texts]
    pred = torch.tensor([s or (math.nan, math.nan) for s in spans], dtype=torch.float32)
    ious = span_iou(pred, torch.tensor(targets, dtype=torch.float32)).tolist()
    return {i: dict(generated=text, pred_span=list(span) if span else None, iou=round(iou, 4))
            for i, text, span, iou in zip(rows, texts, spans, ious)}


def gather(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's records (one per sample id, in rank order) under DDP; ``records`` otherwise."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return records
    shares: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, records)
    seen: dict[Any, dict[str, Any]] = {}
    for share in shares:
        for r in share:
            seen.setdefault(r["id"], r)
    return list(seen.values())


def _mean(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default)."""
    values = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return float(torch.quantile(values, q / 100.0)) if values.numel() else math.nan


def cost_summary(records: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    """Mean of every cost field over samples; p50/p90 of the latencies; max of the peak memory."""
    out: dict[str, float] = {}
    if not records:
        return out
    for key in COST_KEYS:
        values = [r[key] for r in records]
        out[f"{prefix}/{key}"] = _mean(values)
        if key in LATENCY_KEYS:
            out[f"{prefix}/{key}_p50"] = percentile(values, 50)
            out[f"{prefix}/{key}_p90"] = percentile(values, 90)
    out[f"{prefix}/peak_mem_mb_max"] = float(max(r["peak_mem_mb"] for r in records))
    return out


def summarize(records: list[dict[str, Any]], prefix: str = "val") -> dict[str, float | int]:
    """Overall accuracy and ``n``, per-task accuracy (``<prefix>/acc_<task>``, ``<prefix>/n_<task>``),
    the mean of the per-task accuracies (MVBench's headline when tasks differ in size), grounding
    figures (mIoU, R@1 at each IoU threshold, the share of unreadable spans), the mean of each
    reported compressor figure (e.g. ``pool_stride``) and the costs."""
    if not records:
        raise ValueError("no samples were evaluated: the split is empty (check the data config's files)")
    by_task: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r["correct"])
    out: dict[str, float | int] = {f"{prefix}/acc": _mean(r["correct"] for r in records), f"{prefix}/n": len(records)}
    for task, correct in sorted(by_task.items()):
        out[f"{prefix}/acc_{task}"] = _mean(correct)
        out[f"{prefix}/n_{task}"] = len(correct)
    out[f"{prefix}/acc_task_mean"] = _mean(_mean(c) for c in by_task.values())
    open_ended = [r["f1"] for r in records if "f1" in r]
    if open_ended:  # exact match is acc; F1 gives partial credit
        out[f"{prefix}/f1"] = _mean(open_ended)
    grounded = [r for r in records if "iou" in r]
    if grounded:
        ious = torch.tensor([r["iou"] for r in grounded], dtype=torch.float64)
        out[f"{prefix}/miou"] = float(ious.mean())
        for t in THRESHOLDS:
            out[f"{prefix}/r1@{t}"] = float((ious >= t).double().mean())
        out[f"{prefix}/span_invalid"] = _mean(r.get("pred_span") is None for r in grounded)
    reported = sorted({k for r in records for k, v in r.items() if k not in FIELDS and isinstance(v, (int, float))})
    for key in reported:  # what the compressor reports per sample (budget: pool_stride)
        out[f"{prefix}/{key}"] = _mean(r[key] for r in records if key in r)
    out.update(cost_summary(records, prefix))
    return out
