"""The LLM: any Hugging Face causal LM, from a hub name, a local directory or a config."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_attn_implementation(name: str) -> str:
    """"auto" → flash-attn 2 when it is installed and a GPU is present, else PyTorch SDPA."""
    if name != "auto":
        return name
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_llm(
    name_or_path: str | None = None,
    config: dict[str, Any] | None = None,
    dtype: str = "float32",
    attn_implementation: str = "auto",
    vocab_size: int | None = None,
) -> PreTrainedModel:
    """Load ``name_or_path`` with ``from_pretrained``, or build ``config`` (a dict with ``model_type``)
    with random weights. ``vocab_size`` grows the embeddings to fit the tokenizer (never shrinks them:
    Qwen2-7B's 152064 rows stay 152064 whatever tokenizer runs on top, so its geometry is the real one)."""
    if dtype not in DTYPES:
        raise ValueError(f"llm.dtype={dtype!r}; choose one of {sorted(DTYPES)}")
    attn = resolve_attn_implementation(attn_implementation)
    if name_or_path is not None:
        local = Path(name_or_path).expanduser()
        if str(name_or_path).startswith((".", "/", "~")) and not local.is_dir():
            raise FileNotFoundError(f"llm.name_or_path: no model directory at {local}")
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local.is_dir() else name_or_path, dtype=DTYPES[dtype], attn_implementation=attn
        )
    elif config is not None:
        config = dict(config)
        if "model_type" not in config:
            raise ValueError("llm.config needs a model_type (e.g. qwen2, llama, mistral)")
        if vocab_size is not None:
            config["vocab_size"] = max(vocab_size, int(config.get("vocab_size") or 0))
        hf_config = AutoConfig.for_model(**config)
        model = AutoModelForCausalLM.from_config(hf_config, dtype=DTYPES[dtype], attn_implementation=attn)
    else:
        raise ValueError("llm: set name_or_path (hub name or local directory) or config (build from scratch)")
    if vocab_size is not None and model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


def enable_activation_checkpointing(llm: PreTrainedModel) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant ``torch.utils.checkpoint``).

    Transformers marks every decoder layer with ``gradient_checkpointing = True``; vst's explicit layer
    loop reads the same flag. Newer transformers call it ``activation_checkpointing_enable``."""
    if not llm.supports_gradient_checkpointing:
        raise ValueError(f"model.gradient_checkpointing: {type(llm).__name__} does not support it; set it to false")
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
