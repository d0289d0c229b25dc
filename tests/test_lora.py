"""LoRA through peft, injected into the LLM in place: the exact adapter parameter count from r and the
layer shapes, the base model untouched at init, vst's explicit layer loop running through the LoRA
layers, and checkpoints that load back without Hydra."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from transformers import Qwen2ForCausalLM

from vlc.model.video_llm import VideoLLM
from vlc.run import build_model

from conftest import fake_batch

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

VST = ["compressor=vst", "compressor.window=32", "compressor.ratio=4", "compressor.ratios=[4]"]


def _model(cfg_factory, *overrides):
    torch.manual_seed(0)
    return build_model(cfg_factory(["~data", *overrides]))


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_lora_trains_exactly_r_times_in_plus_out_per_projection(cfg_factory):
    plain = _model(cfg_factory)
    lora = _model(cfg_factory, "model.lora.enabled=true", "model.lora.r=8")
    # tiny.yaml: hidden 128, 4 heads of 32, 2 KV heads → k/v project 128 → 64; 2 layers.
    c = lora.backbone.llm.config
    hidden, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    assert (hidden, kv, c.num_hidden_layers) == (128, 64, 2)
    per_layer = 8 * ((hidden + hidden) + (hidden + kv) + (hidden + kv) + (hidden + hidden))  # q, k, v, o
    assert per_layer == 7168
    assert _trainable(lora.backbone.llm) == 2 * per_layer == 14336
    assert sum(p.numel() for p in lora.backbone.llm.parameters()) == sum(p.numel() for p in plain.backbone.llm.parameters()) + 14336
    for name in ("encoder", "projector", "compressor"):  # the other components are as they were
        assert _trainable(lora.component(name)) == _trainable(plain.component(name))
    names = {n for n, p in lora.backbone.llm.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    groups = {g["name"]: sum(p.numel() for p in g["params"]) for g in lora.param_groups()}
    assert groups["llm"] == 14336


def test_lora_keeps_the_hf_model_and_starts_as_the_base_model(cfg_factory):
    plain = _model(cfg_factory).eval()
    lora = _model(cfg_factory, "model.lora.enabled=true").eval()
    assert type(lora.backbone.llm) is Qwen2ForCausalLM  # injected in place, no PeftModel wrapper
    assert type(lora.backbone.llm.model.layers[0].self_attn.q_proj).__name__ == "Linear"  # peft's LoRA Linear
    batch = fake_batch()
    with torch.no_grad():  # B starts at zero: the adapted model is the base model
        torch.testing.assert_close(lora(batch), plain(batch))


def test_vst_runs_its_layer_loop_through_the_lora_layers(cfg_factory):
    m = _model(cfg_factory, *VST, "model.lora.enabled=true").eval()
    attn = m.backbone.llm.model.layers[0].self_attn
    assert torch.equal(m.compressor.beacon_q[0].weight, attn.q_proj.base_layer.weight)  # beacons copy the base
    with torch.no_grad():
        for name, p in m.backbone.llm.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    batch = fake_batch()
    with torch.no_grad():
        adapted = m(batch)
        for module in m.backbone.llm.modules():  # fold B·A·alpha/r into the base weights: no adapter path left
            if hasattr(module, "merge") and hasattr(module, "lora_A"):
                module.merge()
        merged = m(batch)
        for module in m.backbone.llm.modules():
            if hasattr(module, "unmerge") and hasattr(module, "lora_A"):
                module.unmerge()
        assert attn.q_proj.get_delta_weight("default").abs().sum() > 0  # the adapters do change q
    # Equal only if vst (and the text after it) ran the adapters: the merged weights hold them too.
    torch.testing.assert_close(adapted, merged, atol=1e-5, rtol=1e-5)
    m.train()
    m(batch).backward()
    assert attn.q_proj.lora_A["default"].weight.grad.abs().sum() > 0  # gradients reach q's adapter
    assert m.compressor.beacon_q[0].weight.grad is not None
    assert attn.q_proj.base_layer.weight.grad is None  # base weights stay frozen


def test_freezing_the_llm_under_lora_is_rejected(cfg_factory):
    with pytest.raises(ValueError, match="freeze.llm=true with model.lora.enabled=true"):
        _model(cfg_factory, "model.lora.enabled=true", "model.freeze.llm=true")
    with pytest.raises(ValueError, match="match no Linear layer"):
        _model(cfg_factory, "model.lora.enabled=true", "model.lora.target_modules=[qkv]")


def test_lora_checkpoint_loads_back_without_hydra(cfg_factory, tmp_path):
    m = _model(cfg_factory, *VST, "model.lora.enabled=true").eval()
    with torch.no_grad():
        for name, p in m.backbone.llm.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    loaded = VideoLLM.load_from_checkpoint(tmp_path / "lora.ckpt", map_location="cpu").eval()
    assert any(".lora_B." in n for n, _ in loaded.named_parameters())
    batch = fake_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), m(batch))


def test_adapters_train_in_float32_on_a_bf16_llm(cfg_factory):
    m = _model(cfg_factory, "model.lora.enabled=true", "model.llm.dtype=bfloat16")
    q = m.backbone.llm.model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.dtype == torch.bfloat16 and q.lora_A["default"].weight.dtype == torch.float32
    x = torch.randn(1, 3, m.backbone.llm.config.hidden_size, dtype=torch.bfloat16)
    assert q(x).dtype == torch.bfloat16  # peft casts in and out: the model's dataflow stays bf16
