"""Temporal grounding: read a time span out of generated text, and score predicted spans by IoU.

The synthetic ``ground`` task (``vlc.data.synthetic.make_ground_frames``) asks "When does the red
circle appear?" and answers with a span in seconds, ``"2.5-4.0"``; the true span is also stored as
numbers in the sample's ``meta["span"]``, so scoring never parses the reference, only the model's
text. ``VideoLLM`` generates an answer for every sample whose task is ``GROUND_TASK``, reads it with
``parse_span`` and feeds ``TemporalGroundingIoU``, which reports the usual moment-retrieval figures:
mean IoU and R@1 at IoU thresholds 0.3 / 0.5 / 0.7 (the share of samples whose one prediction
overlaps the truth by at least that much).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

GROUND_TASK = "ground"
THRESHOLDS = (0.3, 0.5, 0.7)

# A number that does not continue another one ("1.2.3" must not yield ".3"), in seconds. No sign:
# times are never negative, and "2.5-4.0" must read as two numbers, not 2.5 and -4.0.
_NUMBER = r"(?<![\d.])(\d+(?:\.\d+)?|\.\d+)"
_UNIT = r"(?:\s*(?:s|secs?|seconds?)\b)?"
_SEPARATOR = r"\s*(?:-|–|—|~|to|until|and)\s*"
_SPAN = re.compile(_NUMBER + _UNIT + _SEPARATOR + _NUMBER, re.IGNORECASE)


def parse_span(text: str | None) -> tuple[float, float] | None:
    """The first span ``start <sep> end`` in ``text`` as (start, end) seconds, or None if there is none.

    Accepts "2.5-4.0", "2.5 - 4.0", "2.5s-4.0s", "from 2.5 to 4.0", "between 2.5 and 4.0 seconds"
    (separators ``-``, en/em dash, ``~``, ``to``, ``until``, ``and``). The first match wins, so a
    generation that runs on past its answer still counts. A reversed span is swapped rather than
    rejected: the model located the event and merely wrote its ends in the wrong order.
    """
    if not text:
        return None
    match = _SPAN.search(text)
    if match is None:
        return None
    start, end = float(match.group(1)), float(match.group(2))
    if not (math.isfinite(start) and math.isfinite(end)):
        return None
    return (start, end) if start <= end else (end, start)


def span_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Temporal IoU of matching rows of (N, 2) spans → (N,).

    A row of ``pred`` with a NaN (an unparseable prediction) scores 0. Rows are put in order first,
    so a reversed span is measured as the same interval. A zero-length union (both spans empty)
    scores 0: there is nothing to overlap.
    """
    pred, target = _check_spans(pred, target)
    valid = torch.isfinite(pred).all(1)
    pred = torch.where(valid[:, None], pred, torch.zeros_like(pred)).sort(1).values
    target = target.sort(1).values
    inter = (torch.minimum(pred[:, 1], target[:, 1]) - torch.maximum(pred[:, 0], target[:, 0])).clamp(min=0)
    union = (pred[:, 1] - pred[:, 0]) + (target[:, 1] - target[:, 0]) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))
    return torch.where(valid, iou, torch.zeros_like(iou))


def _check_spans(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.dim() != 2 or pred.shape[1] != 2 or pred.shape != target.shape:
        raise ValueError(
            f"grounding spans: pred {tuple(pred.shape)} and target {tuple(target.shape)}, expected both (N, 2) seconds"
        )
    dtype = pred.dtype if pred.is_floating_point() else torch.get_default_dtype()
    pred, target = pred.to(dtype), target.to(device=pred.device, dtype=dtype)
    bad = (~torch.isfinite(target).all(1)).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"grounding target spans must be finite; rows {bad.tolist()[:10]} are not (the sample's meta['span'])"
        )
    return pred, target


class TemporalGroundingIoU(Metric):
    """Mean IoU and R@1 at IoU thresholds over predicted vs. true spans, in seconds.

    ``update(pred_spans, target_spans)``: (N, 2) tensors; a prediction that could not be parsed is
    passed as NaN, scores IoU 0 (it is still a sample: skipping it would reward a model for not
    answering) and is counted in ``invalid``. ``compute()`` → ``{"miou", "r1@0.3", "r1@0.5", "r1@0.7",
    "invalid"}`` (one ``r1@<t>`` per threshold), all fractions of the samples seen; ``invalid`` is
    the share of unparseable predictions. Every state is a sum (``dist_reduce_fx="sum"``), so under
    DDP the figures are those of all ranks' samples together, not a mean of per-rank means.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    iou_sum: Tensor
    hits: Tensor
    total: Tensor
    invalid: Tensor

    def __init__(self, thresholds: Sequence[float] = THRESHOLDS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        if not self.thresholds or not all(0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"TemporalGroundingIoU: thresholds={list(thresholds)}, expected IoUs in (0, 1]")
        self.add_state("iou_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("hits", torch.zeros(len(self.thresholds)), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred_spans: Tensor, target_spans: Tensor) -> None:
        pred, target = _check_spans(pred_spans, target_spans)
        iou = span_iou(pred, target).to(self.iou_sum)
        thresholds = torch.tensor(self.thresholds, dtype=iou.dtype, device=iou.device)
        self.iou_sum += iou.sum()
        self.hits += (iou[:, None] >= thresholds).sum(0).to(self.hits)
        self.total += iou.numel()
        self.invalid += (~torch.isfinite(pred).all(1)).sum().to(self.invalid)

    def compute(self) -> dict[str, Tensor]:
        # No samples: NaN rather than 0, so "nothing measured" never reads as "all wrong".
        n = self.total.to(self.iou_sum.dtype)
        out = {"miou": self.iou_sum / n}
        for t, hits in zip(self.thresholds, self.hits):
            out[f"r1@{t:g}"] = hits / n
        out["invalid"] = self.invalid.to(n.dtype) / n
        return out
