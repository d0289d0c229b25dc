"""``VideoPipeline``: frames → compressed context → answer loss, option scores or generated text.

A plain ``nn.Module`` over a ``Backbone`` and a ``Compressor`` that names no compressor: what a
compressor reads, where it sits and whether it owns the prefill are read from its declarations
(``vlc.compressors.base``)::

    encode ─▶ [compress: sits=encoder] ─▶ project (or the compressor: sits=projector)
           ─▶ [compress: sits=projected] ─▶ visual span ─▶ prefill (or the compressor's: kind=cache)
           ─▶ Context ─▶ answer loss | option scores | greedy generation

``compress=False`` runs the same path with the compressor bypassed (training's uncompressed
phase). Optimisation, the schedule and logging belong to the Lightning task (``VideoLLM``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from vlc.backbone.base import Backbone, VisualSpan
from vlc.compressors.base import Compressor
from vlc.data.video import materialize
from vlc.evaluation.efficiency import Stopwatch, measure_context
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
from vlc.tokens import Context, FrameTokens

MAX_CANDIDATES = 26  # options are lettered A-Z in the letter answer style


class VideoPipeline(nn.Module):
    def __init__(self, backbone: Backbone, compressor: Compressor, max_new_tokens: int = 16) -> None:
        super().__init__()
        self.backbone = backbone
        self.compressor = compressor
        self.max_new_tokens = int(max_new_tokens)

    @property
    def device(self) -> torch.device:
        return self.backbone.llm.get_input_embeddings().weight.device

    @property
    def prompt(self):
        return self.backbone.prompt

    def embed(self, ids: Tensor) -> Tensor:
        return self.backbone.embed(ids.to(self.device))

    def _prefix(self, batch_size: int) -> tuple[Tensor, Tensor]:
        ids = torch.tensor(self.prompt.prefix_ids(), device=self.device)
        sink = self.embed(ids)[None].expand(batch_size, -1, -1)  # (B, S, D)
        return sink, torch.ones(sink.shape[:2], dtype=torch.long, device=self.device)

    def question_embeds(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The question as the LLM embeds it (B, Lq, D) + mask, for compressors that read it."""
        q = self.prompt.question_batch(batch["questions"], batch["candidates"])
        return self.embed(q.ids), q.mask.to(self.device)

    # ---- frames → visual span ----------------------------------------------------------------
    def _compress(self, ft: FrameTokens, pixels: Tensor, batch: dict) -> FrameTokens:
        c = self.compressor
        question = self.question_embeds(batch) if c.reads_question else None
        return c(ft, pixels if c.reads_pixels else None, question)

    def visual_tokens(self, pixels: Tensor, frame_mask: Tensor, times: Tensor, batch: dict,
                      compress: bool = True) -> FrameTokens:
        """Frames → projected FrameTokens (B, T', N', D), the compressor applied where it sits."""
        ft, norm = self.backbone.encode(pixels, frame_mask, times)
        sits = self.compressor.sits if compress else None
        if sits in ("encoder", "projector"):
            ft = self._compress(ft, norm, batch)
        if sits != "projector":
            ft = self.backbone.project(ft)
        if sits == "projected":
            ft = self._compress(ft, norm, batch)
        return ft

    def _span(self, batch: dict, compress: bool) -> tuple[VisualSpan, Tensor]:
        ft = self.visual_tokens(materialize(batch["pixels"]), batch["frame_mask"], batch["times"], batch, compress)
        return self.backbone.visual_span(ft), ft.num_tokens()

    def _stream(self, batch: dict, frames_per_chunk: int, watch: Stopwatch, count: list[Tensor]
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """Encode, compress and project frames a chunk at a time: only one chunk's activations live."""
        pixels, frame_mask, times = batch["pixels"], batch["frame_mask"], batch["times"]
        for t0 in range(0, pixels.shape[1], frames_per_chunk):
            sl = slice(t0, t0 + frames_per_chunk)
            with watch.span("encoder"):
                ft = self.visual_tokens(pixels[:, sl], frame_mask[:, sl], times[:, sl], batch)
            count.append(ft.num_tokens())
            span = self.backbone.visual_span(ft, closing=t0 + frames_per_chunk >= pixels.shape[1])
            yield span.embeds, span.mask

    # ---- context -----------------------------------------------------------------------------
    def encode_context(self, batch: dict, watch: Stopwatch | None = None, compress: bool = True) -> Context:
        """pixels → Context (KV cache of prefix + visual)."""
        watch = watch or Stopwatch(self.device)
        B = batch["pixels"].shape[0]
        sink, sink_mask = self._prefix(B)
        cache = compress and self.compressor.kind == "cache"
        if cache and self.compressor.streaming and self.backbone.streams:
            count: list[Tensor] = []
            chunk = self.compressor.chunk_frames(self.backbone.llm_tokens_per_frame)
            ctx = self.compressor.prefill(self.backbone.llm, sink, sink_mask, self._stream(batch, chunk, watch, count))
            ctx.visual_tokens = torch.stack(count).sum(0) if count else torch.zeros(B, dtype=torch.long)
            return ctx
        with watch.span("encoder"):  # lazily decoded frames are decoded here, all at once
            span, visual_tokens = self._span(batch, compress)
        if cache:
            chunk = (span.embeds, span.mask) if span.positions is None else (
                span.embeds, span.mask, span.positions + sink.shape[1])  # M-RoPE: past the prefix
            ctx = self.compressor.prefill(self.backbone.llm, sink, sink_mask, [chunk])
            ctx.visual_tokens = visual_tokens
            return ctx
        embeds, mask, positions = self._sequence(sink, span)
        return default_prefill(self.backbone.llm, embeds, mask, visual_tokens, positions)

    def _sequence(self, sink: Tensor, span: VisualSpan) -> tuple[Tensor, Tensor, Tensor | None]:
        """Left-padded [prefix | visual] (B, L, D), its mask, and M-RoPE positions (3, B, L) when
        the backbone gives them (prefix entries at 0 … S-1 in all three sections)."""
        B, S = sink.shape[:2]
        keep = span.mask.bool()
        embeds, mask = left_pad([torch.cat([sink[b], span.embeds[b][keep[b]]]) for b in range(B)])
        if span.positions is None:
            return embeds, mask, None
        prefix = torch.arange(S, device=sink.device).expand(3, S)
        rows = [torch.cat([prefix, span.positions[:, b][:, keep[b]] + S], 1) for b in range(B)]  # (3, L_b)
        positions = torch.zeros(3, B, mask.shape[1], dtype=torch.long, device=sink.device)
        for b, row in enumerate(rows):
            positions[:, b, mask.shape[1] - row.shape[1]:] = row
        return embeds, mask, positions

    # ---- training ----------------------------------------------------------------------------
    def loss(self, batch: dict, compress: bool = True, one_pass: bool = False) -> Tensor:
        """The answer loss of a batch (cross entropy on answer tokens only).

        one_pass: one cache-free forward over [prefix | visual | question + answer], so every LLM
        layer can be activation-checkpointed (the same loss: tests/test_model.py pins it). Cache
        compressors always run context + continuation."""
        text = self.prompt.training_batch(batch["questions"], batch["candidates"], batch["answers"])
        labels = text.labels.to(self.device)
        if one_pass and not (compress and self.compressor.kind == "cache"):
            B = batch["pixels"].shape[0]
            sink, _ = self._prefix(B)
            span, _ = self._span(batch, compress)
            context, context_mask, positions = self._sequence(sink, span)
            embeds = torch.cat([context, self.embed(text.ids).to(context.dtype)], 1)  # (B, Lc + Lt, D)
            mask = torch.cat([context_mask, text.mask.to(self.device)], 1)
            if positions is None:
                position_ids = positions_from_mask(mask)
            else:
                after = positions.amax(dim=(0, 2)) + 1  # (B,) text continues past the last visual position
                text_pos = positions_from_mask(text.mask.to(self.device), after).expand(3, -1, -1)
                position_ids = torch.cat([positions, text_pos], 2)
            logits = self.backbone.llm(
                inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                use_cache=False, logits_to_keep=text.ids.shape[1],
            ).logits  # (B, Lt, V): the text positions only
            return answer_loss(logits, labels)
        ctx = self.encode_context(batch, compress=compress)
        # Checkpointed HF layers drop their KV cache (a cache written twice would be wrong on the
        # recompute), which would cut the text off its context. vst checkpoints its own window loop;
        # the text after it is a few dozen tokens, so it runs un-checkpointed.
        with layer_checkpointing_off(self.backbone.llm):
            logits = continue_from(self.backbone.llm, ctx, self.embed(text.ids), text.mask.to(self.device))
        return answer_loss(logits, labels)

    # ---- answers -----------------------------------------------------------------------------
    @torch.no_grad()
    def score_candidates(self, ctx: Context, questions: list[str], candidates: list[list[str]]) -> Tensor:
        """Log-likelihood of every option's text after the question → (B, K); -inf pads missing options."""
        llm = self.backbone.llm
        B = len(questions)
        k = max(len(c) for c in candidates)
        if k > MAX_CANDIDATES:
            raise ValueError(f"a sample has {k} candidates; at most {MAX_CANDIDATES} are supported")
        q = self.prompt.question_batch(questions, candidates)
        q_mask = q.mask.to(self.device)
        logits = continue_from(llm, ctx, self.embed(q.ids), q_mask)
        first = logits[torch.arange(B, device=self.device), q_mask.sum(1) - 1]  # (B, V) predicts option token 0
        ctx_k = repeat_context(ctx, k)
        c = self.prompt.candidate_batch(candidates, k)
        c_ids, c_mask = c.ids.to(self.device), c.mask.to(self.device)
        logits_c = continue_from(llm, ctx_k, self.embed(c_ids), c_mask)  # (B·k, Lc, V)
        full = torch.cat([first.repeat_interleave(k, 0)[:, None], logits_c[:, :-1]], 1)
        targets = c_ids.masked_fill(c_mask == 0, -100)
        scores = token_logprobs(full, targets).sum(1).view(B, k)
        valid = torch.tensor([[j < len(cs) for j in range(k)] for cs in candidates], device=self.device)
        return scores.masked_fill(~valid, -math.inf)

    @torch.no_grad()
    def generate_from(self, ctx: Context, questions: list[str], candidates: list, max_new_tokens: int | None = None
                      ) -> list[str]:
        """Greedy answers continued from ``ctx``, decoded to text."""
        q = self.prompt.question_batch(questions, candidates)
        tok = self.backbone.tokenizer
        ids = greedy_generate(self.backbone.llm, ctx, self.embed(q.ids), q.mask.to(self.device),
                              max_new_tokens or self.max_new_tokens, tok.eos_token_id)
        return tok.batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers to each sample's question, decoded to text."""
        return self.generate_from(self.encode_context(batch), batch["questions"], batch["candidates"], max_new_tokens)

    @torch.no_grad()
    def evaluate(self, batch: dict) -> list[dict[str, Any]]:
        """One record per sample: the answer (option scores, or generated text for open-ended
        samples), the grounding span for ``ground`` samples, the compressor's report and the cost
        of building the context, measured the same way for every compressor. ``vlc.evaluation.records``
        defines the fields and turns records into metrics."""
        from vlc.evaluation.records import answer_records

        ctx, cost = measure_context(self, batch)
        return answer_records(self, batch, ctx, cost)


@contextmanager
def layer_checkpointing_off(llm: nn.Module):
    """Temporarily clear the ``gradient_checkpointing`` flag of every decoder layer that has it."""
    layers = [m for m in llm.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True
