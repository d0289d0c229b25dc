"""``VLC``: any vlc config or checkpoint as an lmms-eval model.

    lmms-eval --model vlc --model_args ckpt_path=run/last.ckpt,data.num_frames=64 --tasks videomme

``model_args`` are the Hydra overrides ``eval.py`` takes, composed onto ``configs/eval.yaml``: the
model comes from ``vlc.run.load_eval_model`` exactly as ``eval.py`` builds it (``ckpt_path``,
``ckpt_compressor``, ``prompt.*``, or ``model=``/``compressor=`` at random init with
``ckpt_path=null``), frames are sampled by the data config (``data.num_frames`` or ``data.fps``,
``data.max_frames``, ``data.frame_size``, ``data.backend``, ``data.lazy_decode``), the device and
precision come from ``trainer=`` (lmms-eval's ``--device`` wins when given).

lmms-eval splits ``model_args`` on commas that are outside quotes and brackets, so a list stays one
value (``data.frame_size=[224,224]``) and a string with a comma is quoted
(``prompt.extra_instruction='Look closely, then answer.'``). It turns ``true``/``false`` and numbers
into Python values; they are written back as Hydra reads them.

The two request kinds:

- ``generate_until``: the task's prompt text is the question. It goes into vlc's chat template as
  ``eval.py``'s open-ended path puts a question (``PromptBuilder``, no option list: a task that
  wants options writes them into its prompt), the answer is generated greedily from the video's
  context (``VideoPipeline.generate_from``), cut at the first ``until`` string and bounded by
  ``max_new_tokens``.
- ``loglikelihood``: a multiple-choice task sends one request per option, all with the same prompt.
  They are gathered per document; their continuations, stripped of the task's target delimiter,
  are the document's candidates, and vlc scores them as its own eval does
  (``VideoPipeline.score_candidates``: the options listed in the question as ``prompt.show_options``
  says, each option's text, or its letter under ``prompt.answer_style=letter``, scored after the
  question). lmms-eval picks the *smallest* first value (it expects a loss), so each request gets
  its option's negative log-likelihood, summed over the option's tokens as vlc sums it.

Each document's context is measured once (``vlc.evaluation.efficiency.measure_context``): its cost
(visual tokens, KV entries and bytes, encoder / prefill / context ms, peak memory, frames) rides on
lmms-eval's ``token_counts`` into every per-sample log line (``--log_samples``), and the per-task
means and latency percentiles, aggregated as ``eval.py``'s ``metrics.json`` aggregates them, land in
the results file's ``throughput`` block beside the accuracy (``avg_vlc/<task>/<field>``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("vlc")

# Frame lists (a task's doc_to_visual returning images, or a folder of them) carry no frame rate;
# their timestamps are their indices, i.e. 1 frame per second. Only time markers read them.
FRAME_LIST_FPS = 1.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ---- model_args → the composed eval config ------------------------------------------------------


def hydra_overrides(model_args: dict[str, Any]) -> list[str]:
    """lmms-eval's parsed ``model_args`` back to Hydra override strings, in the order given.

    lmms-eval has already turned ``true``/``false`` into bools and digits into numbers; bools go
    back to lower case (Hydra's spelling) and floats through ``repr`` (``1e-05`` stays a float).
    """
    overrides = []
    for key, value in model_args.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        overrides.append(f"{key}={text}")
    return overrides


def compose_eval_config(overrides: list[str]) -> DictConfig:
    """``configs/eval.yaml`` with ``overrides``, as ``eval.py`` would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vlc.run import CONFIG_DIR

    # lmms-eval is not a Hydra app: an initialised instance can only be an earlier compose.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    GlobalHydra.instance().clear()
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ValueError(
            "lmms-eval --model vlc: model_args has no ckpt_path; give ckpt_path=<file.ckpt>, or "
            "ckpt_path=null with model=/compressor= for a random-init model (cost figures only)"
        )
    return cfg


def batch_size_of(value: Any, cfg: DictConfig) -> int:
    """lmms-eval's ``--batch_size`` (default 1), or ``data.batch_size`` when it is ``auto`` or unset."""
    if value is None or str(value).startswith("auto"):
        return int(cfg.data.batch_size)
    size = int(value)
    if size < 1:
        raise ValueError(f"--batch_size {value}: give a positive number of documents per batch")
    return size


# ---- one document as vlc sees it ----------------------------------------------------------------


@dataclass
class Doc:
    """One lmms-eval document: its prompt, what ``doc_to_visual`` returned, and its options."""

    task: str
    split: str
    doc_id: int
    question: str
    visual: Any
    candidates: list[str] | None = None
    max_new_tokens: int | None = None
    until: tuple[str, ...] = ()
    positions: list[int] = field(default_factory=list)  # the request indices this document answers
    option_of: dict[int, int] = field(default_factory=dict)  # request index → its option


@dataclass
class VLCCost(TokenCounts):
    """lmms-eval's per-request token counts plus what vlc measures of the document's context.

    ``input_tokens``: prefix + visual tokens entering the LLM + question; ``output_tokens``: the
    generated text's tokens (generation only; re-encoded, so end-of-text is not counted). The rest is ``measure_context``'s: per sample, latencies are the
    batch's time / batch size, memory is the batch's (``base_mem_mb`` held just before).
    """

    visual_tokens: int = 0
    kv_tokens: int = 0
    kv_bytes: int = 0
    encoder_ms: float = 0.0
    prefill_ms: float = 0.0
    context_ms: float = 0.0
    peak_mem_mb: float = 0.0
    base_mem_mb: float = 0.0
    frames: int = 0
    batch_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TOKEN_FIELDS}
        return {**super().to_dict(), **own}


_TOKEN_FIELDS = {f.name for f in fields(TokenCounts)}


# ---- vlc's side: every call into vlc's model and data API is in this section --------------------


class Backend:
    """The vlc model of a composed eval config, and the frames of its data config.

    ``batch`` turns documents into ``collate_video_qa``'s batch, decoded by the same dataset class
    ``eval.py`` reads through (so the same sampling, resizing, frame transform and lazy decoding);
    ``score`` and ``generate`` build the context with ``measure_context`` and continue from it as
    ``VideoLLM.evaluate_batch`` and ``VideoPipeline.generate_from`` do.
    """

    def __init__(self, cfg: DictConfig, device: str | None = None) -> None:
        import hydra
        import lightning as L

        from vlc.config_check import check_config
        from vlc.run import load_eval_model

        check_config(cfg)  # one paragraph naming the key, before a model is built (trainer=gpu without CUDA, …)
        L.seed_everything(cfg.seed)  # as vlc.run.evaluate: ckpt_path=null gives eval.py's random init
        self.model = load_eval_model(cfg)
        accelerator = cfg.trainer.get("accelerator", "cpu")
        self.device = torch.device(device or ("cuda" if accelerator in ("gpu", "cuda") else "cpu"))
        self.precision = str(cfg.trainer.get("precision", "32-true"))
        self.model.eval().to(self.device)
        data = cfg.data
        transform = data.get("frame_transform")
        self.sampling = dict(
            num_frames=data.get("num_frames"), fps=data.get("fps"), max_frames=data.get("max_frames"),
            backend=data.get("backend", "decord"), frame_size=data.get("frame_size"),
            frame_transform=hydra.utils.instantiate(transform) if transform else None,
            lazy=bool(data.get("lazy_decode", False)),
        )
        self.compressor = type(self.model.compressor).__name__

    def batch(self, docs: list[Doc]) -> dict[str, Any]:
        from vlc.data.annotations import Sample
        from vlc.data.datamodule import VideoQADataset, collate_video_qa
        from vlc.evaluation.efficiency import to_device

        sampling = dict(self.sampling)
        lazy = sampling.pop("lazy")
        items = []
        for d in docs:
            source = video_source(d)
            sample = Sample(id=f"{d.task}/{d.doc_id}", video=source if isinstance(source, str) else "",
                            question=d.question, answer="", candidates=d.candidates, task=d.task)
            if isinstance(source, str):
                # on_error=raise: a stand-in video would answer another document's question
                dataset = VideoQADataset([sample], on_error="raise", lazy=lazy, split=d.task, **sampling)
                items.append(dataset[0])
            else:
                items.append(self._frame_list_item(sample, source))
        return to_device(collate_video_qa(items), self.device)

    def _frame_list_item(self, sample, images: list) -> dict[str, Any]:
        import numpy as np

        from vlc.data.datamodule import _size_pair
        from vlc.data.sampling import frame_times, sample_indices
        from vlc.data.video import resize_frames

        s = self.sampling
        indices = sample_indices(len(images), FRAME_LIST_FPS, s["num_frames"], s["fps"], s["max_frames"])
        frames = torch.from_numpy(np.stack([np.asarray(images[i].convert("RGB")) for i in indices]))  # (T, H, W, 3)
        size = _size_pair(s["frame_size"])
        if size is not None:
            frames = resize_frames(frames, size)
        frames = frames.permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W) uint8
        if s["frame_transform"] is not None:
            frames = s["frame_transform"](frames)
        return dict(id=sample.id, frames=frames, times=torch.from_numpy(frame_times(indices, FRAME_LIST_FPS)),
                    question=sample.question, answer="", candidates=sample.candidates, task=sample.task,
                    meta={}, skipped=[])

    @torch.no_grad()
    def score(self, batch: dict) -> tuple[torch.Tensor, list[VLCCost]]:
        """(B, K) summed log-likelihood of every candidate (-inf past a document's own K), and costs."""
        from vlc.evaluation.efficiency import autocast, measure_context

        pipeline = self.model.pipeline
        with autocast(self.device, self.precision):
            ctx, cost = measure_context(pipeline, batch)
            scores = pipeline.score_candidates(ctx, batch["questions"], batch["candidates"])
        return scores.float().cpu(), self._costs(batch, cost)

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int | None) -> tuple[list[str], list[VLCCost]]:
        from vlc.evaluation.efficiency import autocast, measure_context

        pipeline = self.model.pipeline
        with autocast(self.device, self.precision):
            ctx, cost = measure_context(pipeline, batch)
            texts = [t.strip() for t in pipeline.generate_from(ctx, batch["questions"], batch["candidates"],
                                                                 max_new_tokens)]
        costs = self._costs(batch, cost)
        for c, text in zip(costs, texts):
            c.output_tokens = len(pipeline.prompt.encode(text))
        return texts, costs

    def _costs(self, batch: dict, cost: dict[str, Any]) -> list[VLCCost]:
        prompt = self.model.pipeline.prompt
        prefix = len(prompt.prefix_ids())
        frames = batch["frame_mask"].sum(1)
        B = len(batch["ids"])
        out = []
        for i in range(B):
            question = len(prompt.encode(prompt.question_text(batch["questions"][i], batch["candidates"][i])))
            visual = int(cost["visual_tokens"][i])
            out.append(VLCCost(
                input_tokens=prefix + visual + question, visual_tokens=visual,
                kv_tokens=int(cost["kv_tokens"][i]), kv_bytes=int(cost["kv_bytes"][i]),
                encoder_ms=round(float(cost["encoder_ms"]), 3), prefill_ms=round(float(cost["prefill_ms"]), 3),
                context_ms=round(float(cost["context_ms"]), 3), peak_mem_mb=round(float(cost["peak_mem_mb"]), 2),
                base_mem_mb=round(float(cost.get("base_mem_mb", float("nan"))), 2), frames=int(frames[i]), batch_size=B,
            ))
        return out


def cost_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """Per task and over all documents (``vlc/<task>/<field>``, ``vlc/<field>``): the mean of every
    cost field, p50/p90 of the latencies and the max of the peak memory, as ``eval.py`` aggregates
    them into ``metrics.json``, and the document count ``n``."""
    from vlc.evaluation.records import cost_summary as aggregate

    out: dict[str, float] = {}
    tasks = sorted({r["task"] for r in records})
    for prefix, rows in [("vlc", records)] + [(f"vlc/{t}", [r for r in records if r["task"] == t]) for t in tasks]:
        out.update(aggregate(rows, prefix))
        out[f"{prefix}/n"] = len(rows)
    return out


# ---- lmms-eval's side -----------------------------------------------------------------------------


def video_source(doc: Doc) -> str | list:
    """What a document's ``doc_to_visual`` returned, as one video path or one list of frames."""
    visual = doc.visual
    where = f"task {doc.task}, doc {doc.doc_id}"
    if visual is None or (isinstance(visual, (list, tuple)) and not visual):
        raise ValueError(f"{where}: doc_to_visual returned nothing; vlc evaluates video tasks")
    if isinstance(visual, (str, os.PathLike)):
        visual = [visual]
    if all(isinstance(v, (str, os.PathLike)) for v in visual):
        if len(visual) > 1:
            raise ValueError(f"{where}: doc_to_visual returned {len(visual)} videos ({visual[:3]} …); "
                             f"vlc reads one video per question")
        path = os.fspath(visual[0])
        if os.path.isdir(path):  # a folder of frames, in name order
            from PIL import Image

            names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
            if not names:
                raise ValueError(f"{where}: {path} is a folder without {'/'.join(IMAGE_SUFFIXES)} frames")
            return [Image.open(os.path.join(path, n)) for n in names]
        return path
    if all(hasattr(v, "convert") for v in visual):  # PIL images: the frames themselves
        return list(visual)
    kinds = sorted({type(v).__name__ for v in visual})
    raise ValueError(f"{where}: doc_to_visual returned {kinds}; vlc reads a video path, a frame folder or PIL frames")


def stop_at(text: str, until: tuple[str, ...]) -> str:
    """``text`` up to the first of the stop strings (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class VLC(lmms):
    """vlc's model under lmms-eval. ``model_args``: ``eval.py``'s Hydra overrides (module docstring)."""

    is_simple = True

    def __init__(self, batch_size: Any = None, max_batch_size: Any = None, device: str | None = None,
                 **model_args: Any) -> None:
        super().__init__()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError("lmms-eval --model vlc runs in one process; launch it without accelerate/torchrun "
                               "(WORLD_SIZE is set above 1)")
        self.overrides = hydra_overrides(model_args)
        self.cfg = compose_eval_config(self.overrides)
        self.backend = Backend(self.cfg, device)
        self.batch_size_per_gpu = batch_size_of(batch_size, self.cfg)
        self.records: list[dict[str, Any]] = []  # one per document: task + cost, for the summary
        self.seconds = 0.0
        self.generated_tokens = 0
        log.info("lmms-eval --model vlc: %s (%s) on %s, batch size %d", self.overrides, self.backend.compressor,
                 self.backend.device, self.batch_size_per_gpu)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    # ---- requests ---------------------------------------------------------------------------
    def _doc(self, question: str, doc_to_visual: Callable | None, doc_id: int, task: str, split: str) -> Doc:
        source = self.task_dict[task][split][doc_id]
        visual = doc_to_visual(source) if callable(doc_to_visual) else doc_to_visual
        return Doc(task=task, split=split, doc_id=doc_id, question=question, visual=visual)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        docs: dict[tuple, Doc] = {}
        for pos, req in enumerate(requests):
            question, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or ()
            until = (until,) if isinstance(until, str) else tuple(until)
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
                log.warning("task %s asks for sampling (%s); vlc decodes greedily", task, gen_kwargs)
            key = (task, split, doc_id, question, gen_kwargs.get("max_new_tokens"), until)
            if key not in docs:  # repeats of one request share one answer: decoding is greedy
                doc = self._doc(question, doc_to_visual, doc_id, task, split)
                doc.max_new_tokens, doc.until = gen_kwargs.get("max_new_tokens"), until
                docs[key] = doc
            docs[key].positions.append(pos)
        results: list[GenerationResult | None] = [None] * len(requests)
        for chunk in self._chunks(list(docs.values()), lambda d: d.max_new_tokens):
            start = time.perf_counter()
            texts, costs = self.backend.generate(self.backend.batch(chunk), chunk[0].max_new_tokens)
            self.seconds += time.perf_counter() - start
            for doc, text, cost in zip(chunk, texts, costs):
                self._record(doc, cost)
                self.generated_tokens += cost.output_tokens or 0
                for pos in doc.positions:
                    results[pos] = GenerationResult(text=stop_at(text, doc.until), token_counts=cost)
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        docs: dict[tuple, Doc] = {}
        options: dict[tuple, dict[int, str]] = {}
        for pos, req in enumerate(requests):
            if len(req.args) != 6:
                raise ValueError(f"task {req.task_name}: a loglikelihood request without a video ({req.args!r}: "
                                 f"acc_mutual_info's unconditional requests?); vlc scores options given a video")
            question, continuation, doc_to_visual, doc_id, task, split = req.args
            key = (task, split, doc_id, question)
            if key not in docs:
                docs[key] = self._doc(question, doc_to_visual, doc_id, task, split)
                options[key] = {}
            if callable(continuation):  # output_type: loglikelihood passes doc_to_target
                continuation = continuation(self.task_dict[task][split][doc_id])
            # lmms-eval prefixes the option with the task's target_delimiter (" "); vlc's template
            # places an option right after the assistant turn opens, as eval.py scores it.
            options[key].setdefault(req.idx, str(continuation).strip())
            docs[key].positions.append(pos)
            docs[key].option_of[pos] = req.idx
        for key, doc in docs.items():
            order = sorted(options[key])  # lmms-eval numbers a document's options 0..K-1 in doc_to_choice order
            doc.candidates = [options[key][i] for i in order]
            doc.option_of = {pos: order.index(idx) for pos, idx in doc.option_of.items()}
        results: list[GenerationResult | None] = [None] * len(requests)
        for chunk in self._chunks(list(docs.values()), lambda d: None):
            start = time.perf_counter()
            scores, costs = self.backend.score(self.backend.batch(chunk))
            self.seconds += time.perf_counter() - start
            for i, (doc, cost) in enumerate(zip(chunk, costs)):
                self._record(doc, cost)
                for k, pos in enumerate(doc.positions):
                    # (loss, is_greedy): lmms-eval takes the argmin; vlc does not report greediness.
                    # Wrapped in a GenerationResult, not returned bare: lmms-eval 0.7 turns a bare
                    # (float, bool) into its string. The context is built once per document, so its
                    # first request carries the cost (lmms-eval adds token counts up over requests).
                    nll = -float(scores[i, doc.option_of[pos]])
                    results[pos] = GenerationResult(text=(nll, False), token_counts=cost if k == 0 else None)
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("lmms-eval --model vlc answers one question per video; multi-round tasks "
                                  "are not supported")

    def _chunks(self, docs: list[Doc], setting: Callable[[Doc], Any]) -> list[list[Doc]]:
        """Consecutive documents, up to the batch size, that share ``setting`` (e.g. max_new_tokens)."""
        chunks: list[list[Doc]] = []
        for doc in docs:
            if chunks and len(chunks[-1]) < self.batch_size_per_gpu and setting(chunks[-1][0]) == setting(doc):
                chunks[-1].append(doc)
            else:
                chunks.append([doc])
        return chunks

    def _record(self, doc: Doc, cost: VLCCost) -> None:
        self.records.append(dict(task=doc.task, **{k: v for k, v in cost.to_dict().items()}))

    # ---- the run's summary ------------------------------------------------------------------
    def clean(self) -> None:
        """lmms-eval calls this once every request has run: the cost summary goes into its
        throughput log, which the results file carries beside the accuracy."""
        if self.records:
            from lmms_eval.models.model_utils.gen_metrics import log_metrics

            self.summary = cost_summary(self.records)
            log_metrics(
                total_elapsed_time=self.seconds, total_gen_tokens=self.generated_tokens,
                avg_speed=self.generated_tokens / self.seconds if self.seconds > 0 else 0.0,
                additional_metrics={"total_requests": len(self.records), **self.summary},
            )
            self.records = []
            self.seconds, self.generated_tokens = 0.0, 0
        super().clean()
