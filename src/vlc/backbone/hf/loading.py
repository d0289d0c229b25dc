"""What every pretrained family shares: where its weights are, in which dtype and attention, the
causal LM over its language model, and its chat template cut into vlc's prompt pieces."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from vlc.backbone.llm import DTYPES, resolve_attn_implementation

# Placeholders rendered into the chat template and cut out again; plain words, so no template
# escapes or strips them.
QUESTION_SLOT = "VLCQUESTIONSLOT"
ANSWER_SLOT = "VLCANSWERSLOT"


def resolve_source(name_or_path: str, key: str = "backbone.name_or_path") -> str:
    """A local folder (checked to exist when it looks like a path) or a hub name, as given."""
    local = Path(str(name_or_path)).expanduser()
    if local.is_dir():
        return str(local)
    if str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{key}: no model folder at {local}")
    return str(name_or_path)


def resolve_dtype(dtype: str | torch.dtype, key: str = "backbone.dtype") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"{key}={dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def pretrained_kwargs(dtype: str | torch.dtype, attn_implementation: str) -> dict:
    """``from_pretrained`` keyword arguments: the dtype and the attention ("auto": flash-attn 2 when
    installed on a GPU, else SDPA)."""
    return {"dtype": resolve_dtype(dtype), "attn_implementation": resolve_attn_implementation(attn_implementation)}


def causal_lm_over(language_model: PreTrainedModel, lm_head: nn.Module) -> PreTrainedModel:
    """The text model's own causal-LM class (``AutoModelForCausalLM`` for its config: Qwen2ForCausalLM,
    LlamaForCausalLM, …) holding the VLM's ``language_model`` and ``lm_head`` themselves.

    A vision-language model's forward also runs its vision tower, and freezing or LoRA-targeting it
    would reach the vision tower too (SigLIP and CLIP name their projections q_proj/k_proj/v_proj).
    This view shares every weight with the VLM (nothing is copied) and is an ordinary Hugging Face
    causal LM: ``inputs_embeds``, ``past_key_values``, ``logits_to_keep``, ``get_decoder().layers``,
    gradient checkpointing."""
    config = language_model.config
    with torch.device("meta"):  # a shell: its own modules are replaced below, never allocated
        view = AutoModelForCausalLM.from_config(config)
    view.model = language_model
    view.lm_head = lm_head
    view.config = config
    leftover = [name for name, p in [*view.named_parameters(), *view.named_buffers()] if p.is_meta]
    if leftover:
        raise TypeError(
            f"{type(view).__name__} has parts beyond .model and .lm_head ({leftover[:3]}); "
            "vlc cannot view this text model as a causal LM"
        )
    return view


def prompt_from_chat_template(processor, video_token: str, question: str = "{question}{options}") -> dict[str, str]:
    """Cut the processor's chat template into PromptBuilder's ``prefix`` / ``question`` / ``answer``.

    The template is rendered for one user turn (a video, then the text ``QUESTION_SLOT``) with the
    generation prompt, and again with an assistant turn ``ANSWER_SLOT``. The prefix is everything
    before the video placeholder (and the tokenizer's BOS where it adds one, as Llama's does); the
    question everything after it up to the generation prompt, with the slot replaced by ``question``;
    the answer is ``{answer}`` and whatever the template puts after an assistant turn (e.g.
    ``<|im_end|>\\n``), with the space a template writes before the answer text ("ASSISTANT: red").
    What the model's own prompt holds before the video (a system prompt, the role header) is thus
    vlc's prefix — the sink of ``vst``."""
    user = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION_SLOT}]}
    asked = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    answered = processor.apply_chat_template(
        [user, {"role": "assistant", "content": [{"type": "text", "text": ANSWER_SLOT}]}],
        add_generation_prompt=False, tokenize=False,
    )
    if asked.count(video_token) != 1 or asked.count(QUESTION_SLOT) != 1:
        raise ValueError(
            f"the chat template rendered {asked.count(video_token)} video placeholders {video_token!r} and "
            f"{asked.count(QUESTION_SLOT)} question texts for one video and one question: {asked!r}"
        )
    cut = asked.index(video_token)
    prefix, rest = asked[:cut], asked[cut + len(video_token):]
    # What the template puts between the generation prompt and the answer text belongs to the question
    # (it is read, not predicted); what follows the answer text belongs to the answer (it is predicted).
    tail = answered[len(asked):] if answered.startswith(asked) else None
    if tail is None or ANSWER_SLOT not in tail:
        raise ValueError(
            "the chat template's assistant turn does not continue its generation prompt "
            f"(generation prompt render: {asked!r}; with the answer: {answered!r})"
        )
    before, after = tail.split(ANSWER_SLOT, 1)
    # "ASSISTANT:" then " red": a space before the answer text is its first token's (" red", "▁red").
    lead = before if not before.strip() else ""
    # The model's processor tokenizes its prompt with the tokenizer's special tokens (Llama's <s>);
    # vlc encodes each piece without them, so the prefix carries the BOS itself.
    tok = processor.tokenizer
    bos = tok.bos_token
    with_bos = tok("a").input_ids[:1] == [tok.bos_token_id] != tok("a", add_special_tokens=False).input_ids[:1]
    if bos is not None and with_bos and not prefix.startswith(bos):
        prefix = bos + prefix
    escape = lambda s: s.replace("{", "{{").replace("}", "}}")  # PromptBuilder formats these
    return {
        "prefix": prefix,
        "question": escape(rest + (before if not lead else "")).replace(QUESTION_SLOT, question),
        "answer": escape(lead) + "{answer}" + escape(after),
    }
