"""Prompt assembly: ``prefix | visual span | question | answer``.

The prefix (the sink for ``vst``) and the visual span form the context; the question and answer are
text continued after it, so no compressor ever sees the question. The template follows Qwen2's chat
format so the tiny model and Qwen2-7B read the same layout.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlc.tokens import FrameTokens, format_seconds

LETTERS = string.ascii_uppercase


@dataclass
class TextBatch:
    ids: Tensor  # (B, L) right-padded
    mask: Tensor  # (B, L) long
    labels: Tensor | None = None  # (B, L), -100 everywhere but the answer


class PromptBuilder:
    """Builds token ids for each part of the prompt.

    answer_style:  "text" — the answer is the option's text and options are scored by likelihood of
                   their text; "letter" — options are listed as "(A) …" and the answer is the letter,
                   scored after "Best option:(" as MVBench does.
    show_options:  list the candidates in the question (always on for "letter").
    time_markers:  insert ``time_format`` text before each kept frame's tokens (VideoLLaMA3/TimeMarker).
    time_format:   ``{t}`` is the time in seconds (a float, e.g. ``{t:.1f}``); ``{s}`` is the same time
                   written as the grounding task's answers write it (one decimal, two where needed:
                   4 fps puts frames at 0.25 s, which ``{t:.1f}`` would print as "0.2").
    extra_instruction: a sentence added to the question (e.g. NumPro's prompt).
    """

    def __init__(
        self,
        tokenizer,
        prefix: str = "<|im_start|>user\n",
        question: str = "\n{question}{options}<|im_end|>\n<|im_start|>assistant\n",
        answer: str = "{answer}<|im_end|>",
        answer_style: str = "text",
        show_options: bool = True,
        time_markers: bool = False,
        time_format: str = "Time {s}s:",
        extra_instruction: str = "",
    ) -> None:
        if answer_style not in ("text", "letter"):
            raise ValueError(f"prompt.answer_style must be 'text' or 'letter', got {answer_style!r}")
        self.tok = tokenizer
        self.prefix, self.question, self.answer = prefix, question, answer
        self.answer_style, self.show_options = answer_style, show_options or answer_style == "letter"
        self.time_markers, self.time_format = time_markers, time_format
        self.extra_instruction = extra_instruction
        self.settings = dict(prefix=prefix, question=question, answer=answer, answer_style=answer_style,
                             show_options=show_options, time_markers=time_markers, time_format=time_format,
                             extra_instruction=extra_instruction)
        self._marker_cache: dict[str, list[int]] = {}

    def replace(self, **changes) -> PromptBuilder:
        """The same template with ``changes`` (PromptBuilder arguments) applied."""
        unknown = sorted(set(changes) - set(self.settings))
        if unknown:
            raise ValueError(f"prompt: unknown key(s) {unknown}; the prompt takes {sorted(self.settings)}")
        return PromptBuilder(self.tok, **{**self.settings, **changes})

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    # ---- context side -------------------------------------------------------------------------
    def prefix_ids(self) -> list[int]:
        return self.encode(self.prefix)

    def marker_ids(self, t: float) -> list[int]:
        text = self.time_format.format(t=t, s=format_seconds(t))
        if text not in self._marker_cache:
            self._marker_cache[text] = self.encode(text)
        return self._marker_cache[text]

    def visual_span(self, embeds: Tensor, ft: FrameTokens, embed: nn.Module) -> tuple[Tensor, Tensor]:
        """Flatten projected tokens (B, T, N, D) by ``ft.token_mask`` into a right-padded span
        (B, L, D) with mask (B, L); with time markers, each kept frame is preceded by its marker."""
        B, T, N, D = embeds.shape
        keep = ft.token_mask
        if not self.time_markers:
            seqs = [embeds[b][keep[b]] for b in range(B)]  # (L_b, D)
        else:
            frame_kept = ft.frame_mask
            seqs = []
            for b in range(B):
                parts = []
                for t in range(T):
                    if frame_kept[b, t]:
                        ids = torch.tensor(self.marker_ids(float(ft.times[b, t])), device=embeds.device)
                        parts += [embed(ids).to(embeds.dtype), embeds[b, t][keep[b, t]]]
                seqs.append(torch.cat(parts) if parts else embeds.new_zeros(0, D))
        length = max(1, max(s.shape[0] for s in seqs))
        out = embeds.new_zeros(B, length, D)
        mask = torch.zeros(B, length, dtype=torch.long, device=embeds.device)
        for b, s in enumerate(seqs):
            out[b, : s.shape[0]] = s
            mask[b, : s.shape[0]] = 1
        return out, mask

    # ---- text side ----------------------------------------------------------------------------
    def question_text(self, question: str, candidates: list[str] | None) -> str:
        options = ""
        if candidates and self.show_options:
            if self.answer_style == "letter":
                options = "\nOptions:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(candidates))
            else:
                options = "\nOptions: " + ", ".join(candidates) + "."
        if self.extra_instruction:
            question = f"{self.extra_instruction} {question}"
        text = self.question.format(question=question, options=options)
        if self.answer_style == "letter":
            text += "Best option:("
        return text

    def answer_text(self, answer: str, candidates: list[str] | None) -> str:
        if self.answer_style == "letter":
            if not candidates or answer not in candidates:
                raise ValueError(f"answer {answer!r} is not among the candidates {candidates}")
            return self.answer.format(answer=f"{LETTERS[candidates.index(answer)]}) {answer}")
        return self.answer.format(answer=answer)

    def candidate_texts(self, candidates: list[str]) -> list[str]:
        """What is scored for each option: its letter (MVBench) or its whole answer text."""
        if self.answer_style == "letter":
            return [LETTERS[i] for i in range(len(candidates))]
        return [self.answer.format(answer=c) for c in candidates]

    def _pad(self, rows: list[list[int]], label_from: list[int] | None = None) -> TextBatch:
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long) if label_from is not None else None
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            if labels is not None:
                labels[i, label_from[i] : len(r)] = ids[i, label_from[i] : len(r)]
        return TextBatch(ids, mask, labels)

    def training_batch(self, questions, candidates, answers) -> TextBatch:
        """question + answer ids with labels on the answer tokens only (everything else -100)."""
        rows, starts = [], []
        for q, c, a in zip(questions, candidates, answers):
            q_ids = self.encode(self.question_text(q, c))
            rows.append(q_ids + self.encode(self.answer_text(a, c)))
            starts.append(len(q_ids))
        return self._pad(rows, label_from=starts)

    def question_batch(self, questions, candidates) -> TextBatch:
        return self._pad([self.encode(self.question_text(q, c)) for q, c in zip(questions, candidates)])

    def candidate_batch(self, candidates: list[list[str]], k: int) -> TextBatch:
        """Each sample's candidates padded to k (B·k rows; missing options are a lone pad token)."""
        rows = []
        for cands in candidates:
            texts = self.candidate_texts(cands)
            rows += [self.encode(t) for t in texts] + [[self.tok.pad_token_id]] * (k - len(texts))
        return self._pad(rows)
