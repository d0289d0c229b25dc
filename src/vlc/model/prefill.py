"""The LLM side: prefill a context, continue text from it, score candidates, generate greedily.

Every compressor ends in a ``Context`` (the KV cache of prefix + visual). The default prefill is one
ordinary forward with ``use_cache=True``; ``vst`` replaces it with its windowed beacon prefill.
Everything after the context goes through the model's own forward, so training, scoring and
generation share one path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from vlc.tokens import Context, iter_cache_layers


def left_pad(seqs: list[Tensor], length: int | None = None) -> tuple[Tensor, Tensor]:
    """[(L_i, D)] → (B, L, D) left-padded with zeros, mask (B, L) long."""
    length = length or max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros(len(seqs), length, *seqs[0].shape[1:])
    mask = torch.zeros(len(seqs), length, dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        if s.shape[0]:
            out[i, length - s.shape[0] :] = s
            mask[i, length - s.shape[0] :] = 1
    return out, mask


def positions_from_mask(mask: Tensor, start: Tensor | None = None) -> Tensor:
    """(B, L) padding mask → position ids counting only real entries (pads get 0)."""
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return pos if start is None else pos + start[:, None]


def default_prefill(
    llm: PreTrainedModel, embeds: Tensor, mask: Tensor, visual_tokens: Tensor, positions: Tensor | None = None
) -> Context:
    """One forward over left-padded ``prefix + visual`` embeds (B, L, D) with mask (B, L).

    positions: None counts real entries (1-D RoPE); M-RoPE models pass (3, B, L), and the text
    after the context continues from the largest position + 1, as those models number it."""
    out = llm.model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions_from_mask(mask) if positions is None else positions,
        past_key_values=DynamicCache(config=llm.config),
        use_cache=True,
    )
    next_position = mask.sum(1) if positions is None else (positions * mask[None]).amax(dim=(0, 2)) + 1
    return Context(out.past_key_values, mask, next_position, visual_tokens)


def continue_from(
    llm: PreTrainedModel, ctx: Context, embeds: Tensor, mask: Tensor, logits_to_keep: int | Tensor = 0
) -> Tensor:
    """Run right-padded text embeds (B, L, D) after the context; returns logits (B, L, V).

    The context's cache grows by L entries (transformers caches are appended in place), and its
    mask and next positions are advanced to match, so a later call continues after this one.
    """
    full_mask = torch.cat([ctx.attention_mask, mask], 1)
    position_ids = positions_from_mask(mask, ctx.next_position)
    out = llm(
        inputs_embeds=embeds,
        attention_mask=full_mask,
        position_ids=position_ids,
        past_key_values=ctx.cache,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    ctx.attention_mask = full_mask
    ctx.next_position = ctx.next_position + mask.sum(1)
    return out.logits


def repeat_context(ctx: Context, k: int) -> Context:
    """Each sample's context repeated k times along the batch (B → B·k), as a new cache."""
    cache = DynamicCache()
    for i, (keys, values) in enumerate(iter_cache_layers(ctx.cache)):
        cache.update(keys.repeat_interleave(k, 0), values.repeat_interleave(k, 0), i)
    return Context(
        cache,
        ctx.attention_mask.repeat_interleave(k, 0),
        ctx.next_position.repeat_interleave(k, 0),
        ctx.visual_tokens.repeat_interleave(k, 0),
    )


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(targets) under logits (B, L, V) → (B, L); -100 targets give 0."""
    valid = targets != -100
    lp = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return lp * valid


def answer_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross entropy; ``labels`` (B, L) align with the logits' inputs (shifted here)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


@torch.no_grad()
def greedy_generate(
    llm: PreTrainedModel, ctx: Context, embeds: Tensor, mask: Tensor, max_new_tokens: int, eos_token_id: int
) -> Tensor:
    """Greedy decoding after ``context + prompt`` (right-padded prompt embeds). Returns (B, ≤max_new) ids,
    eos_token_id after a sample has finished."""
    B = embeds.shape[0]
    last = mask.sum(1) - 1  # the last real prompt token of each sample
    logits = continue_from(llm, ctx, embeds, mask)
    nxt = logits[torch.arange(B), last].argmax(-1)  # (B,)
    out, done = [], torch.zeros(B, dtype=torch.bool, device=embeds.device)
    embed = llm.get_input_embeddings()
    for _ in range(max_new_tokens):
        nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
        out.append(nxt)
        done |= nxt == eos_token_id
        if done.all():
            break
        step_mask = torch.ones(B, 1, dtype=torch.long, device=embeds.device)
        logits = continue_from(llm, ctx, embed(nxt)[:, None], step_mask)
        nxt = logits[:, -1].argmax(-1)
    return torch.stack(out, 1)
