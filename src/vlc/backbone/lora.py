"""LoRA adapters on the LLM through peft, injected in place.

``peft.inject_adapter_in_model`` swaps the targeted ``nn.Linear`` layers for LoRA layers inside the
same Hugging Face model object (no ``PeftModel`` wrapper), so ``VideoLLM.llm`` stays the model that
prefill, continuation and vst's explicit layer loop already drive: ``layer.self_attn.q_proj(x)`` is
now ``base(x) + B(A(dropout(x))) * alpha / r``. Only the adapters require grad afterwards.

The adapters are kept in float32 whatever the base weights' dtype (as ``peft.get_peft_model`` does):
an lr 2e-4 AdamW update is below bf16's resolution for most weights, so bf16 adapters would train
on rounding. peft casts the input to the adapter's dtype and the result back.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def apply_lora(
    llm: nn.Module,
    enabled: bool = False,
    r: int = 64,
    alpha: float = 128,
    dropout: float = 0.05,
    target_modules: Sequence[str] = TARGETS,
) -> nn.Module:
    """Inject LoRA adapters (rank ``r``, scale ``alpha / r``) into ``target_modules`` of ``llm``;
    the base weights are frozen. Returns ``llm`` itself. ``enabled=False`` does nothing."""
    if not enabled:
        return llm
    try:
        import peft
    except ImportError as err:  # pragma: no cover - peft is in the dev and lora extras
        raise ImportError("model.lora.enabled=true needs peft: pip install -e '.[lora]'") from err
    if r < 1:
        raise ValueError(f"model.lora.r={r}; the adapter rank must be >= 1")
    names = {name.rsplit(".", 1)[-1] for name, module in llm.named_modules() if isinstance(module, nn.Linear)}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise ValueError(
            f"model.lora.target_modules: {missing} match no Linear layer of {type(llm).__name__} "
            f"(its Linear layers are named {sorted(names)})"
        )
    config = peft.LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=float(dropout),
                             target_modules=list(target_modules))
    out = peft.inject_adapter_in_model(config, llm)
    assert out is llm  # in place: the HF model object is kept
    from peft.tuners.tuners_utils import cast_adapter_dtype

    cast_adapter_dtype(llm, "default", autocast_adapter_dtype=True)  # bf16/fp16 adapters → float32
    return llm

