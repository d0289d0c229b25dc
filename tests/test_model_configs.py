"""The real-model configs, checked from the configs alone (no download: timm geometry with
pretrained=False on the meta device, Qwen2-7B from the `llm.config` block in the repo), the
encoder's local-folder loading path, and the Video-XL stage experiments on the tiny backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from omegaconf import OmegaConf
from timm.models import save_for_hf
from transformers import AutoConfig, AutoModelForCausalLM

from vlc.backbone.encoder import VisionEncoder
from vlc.run import CONFIG_DIR, build_model

ROOT = Path(__file__).resolve().parents[1]


def _geometry(name: str) -> tuple[VisionEncoder, dict]:
    model = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"), resolve=True)
    if "defaults" in model:  # siglip_qwen2_7b = videoxl_7b + its own encoder block
        base = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "videoxl_7b.yaml"), resolve=True)
        base["encoder"].update(model["encoder"])
        model = base
    with torch.device("meta"):  # architecture only: no weights are allocated or downloaded
        enc = VisionEncoder(**{**model["encoder"], "pretrained": False})
    return enc, model


def test_videoxl_7b_geometry_from_the_config_alone():
    enc, model = _geometry("videoxl_7b")
    assert enc.model.patch_embed.grid_size == (24, 24)  # 336 / 14: 576 patches per frame
    assert enc.grid == (12, 12) and enc.tokens_per_frame == 144  # pooled 2x2, as Video-XL
    assert enc.dim == 1024 and enc.layer == 22 and len(enc.model.blocks) == 23  # penultimate of 24 blocks
    cfg = AutoConfig.for_model(**model["llm"]["config"])
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (3584, 28)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (28, 4)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings) == (18944, 152064, False)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in llm.parameters()) == 7_615_616_512  # Qwen2-7B-Instruct's count
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2  # K+V, bf16
    assert kv_bytes_per_token == 57_344  # 128 frames x 144 tokens uncompressed: 18432 tokens ≈ 1.06 GB per sample


def test_siglip_variant_has_no_cls_and_196_tokens_per_frame():
    enc, model = _geometry("siglip_qwen2_7b")
    assert enc.model.num_prefix_tokens == 0  # SigLIP: no CLS token to drop
    assert enc.model.patch_embed.grid_size == (27, 27)  # 384 // 14: 729 patches
    assert enc.grid == (14, 14) and enc.tokens_per_frame == 196 and enc.dim == 1152
    assert model["llm"]["config"]["hidden_size"] == 3584  # the same Qwen2-7B


def test_pool_stride_that_does_not_divide_keeps_the_border_patches():
    torch.manual_seed(0)
    enc = VisionEncoder(name="vit_tiny_patch16_224", img_size=40, layer=-1, pool_stride=2,
                        model_kwargs=dict(patch_size=8, embed_dim=16, depth=1, num_heads=2)).eval()
    assert enc.model.patch_embed.grid_size == (5, 5) and enc.grid == (3, 3)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        enc.pool_stride = 1
        raw = enc.encode_normalized(x).view(1, 5, 5, 16)
        enc.pool_stride = 2
        pooled = enc.encode_normalized(x).view(1, 3, 3, 16)
    torch.testing.assert_close(pooled[0, 0, 0], raw[0, :2, :2].mean((0, 1)))
    torch.testing.assert_close(pooled[0, 2, 2], raw[0, 4, 4])  # the corner: one patch, averaged over itself
    torch.testing.assert_close(pooled[0, 0, 2], raw[0, :2, 4].mean(0))


def test_encoder_loads_a_folder_timm_saved(tmp_path):
    """`encoder.name: local-dir:/path` is timm's own way to read a saved model folder (config + weights)."""
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=2)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, **args).eval()
    save_for_hf(vit, tmp_path / "vit", model_args={**args, "num_classes": 0})
    enc = VisionEncoder(name=f"local-dir:{tmp_path / 'vit'}", pretrained=True, layer=-1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))[:, 1:]
        torch.testing.assert_close(enc.encode_normalized(x), ref)


def _groups(cfg_factory, *overrides):
    torch.manual_seed(0)
    m = build_model(cfg_factory(["~data", *overrides, "model=tiny", "trainer=cpu"]))
    return m, {g["name"]: (g["lr"], sum(p.numel() for p in g["params"])) for g in m.param_groups()}


def test_videoxl_stage_experiments_train_what_the_paper_trains(cfg_factory):
    m, groups = _groups(cfg_factory, "experiment=videoxl_stage1")
    assert groups == {"projector": (5e-4, sum(p.numel() for p in m.backbone.projector.parameters()))}
    cfg = cfg_factory(["experiment=videoxl_stage1"])
    assert (cfg.data.num_frames, cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (4, 8, 4)
    assert cfg.model.encoder.name == "vit_large_patch14_clip_336.openai" and cfg.optim.warmup_ratio == 0.03

    m, groups = _groups(cfg_factory, "experiment=videoxl_stage2", "compressor.window=160")
    assert set(groups) == {"projector", "compressor", "llm"} and {lr for lr, _ in groups.values()} == {1e-5}
    assert groups["llm"][1] == sum(p.numel() for p in m.backbone.llm.parameters())
    cfg = cfg_factory(["experiment=videoxl_stage2"])
    assert (cfg.compressor.window, cfg.data.num_frames, cfg.model.freeze.encoder) == (1440, 128, True)

    m, groups = _groups(cfg_factory, "experiment=videoxl_stage2_lora", "compressor.window=160", "model.lora.r=4")
    assert groups["projector"][0] == 2e-5 and groups["compressor"][0] == 1e-5 and groups["llm"][0] == 2e-4
    assert groups["llm"][1] == 2 * 4 * (256 + 192 + 192 + 256)  # only the adapters (tiny: 2 layers, r=4)


def _lrs(cfg_factory, *overrides, steps: int = 100) -> list[float]:
    """The learning rate at each of ``steps`` optimizer steps (lr 1.0, decaying to 0)."""
    m = build_model(cfg_factory(["~data", "optim.min_lr_ratio=0.0", "optim.lr=1.0", *overrides]))
    m._trainer = SimpleNamespace(estimated_stepping_batches=steps)
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def test_warmup_ratio_and_cosine_schedule(cfg_factory):
    lrs = _lrs(cfg_factory, "optim.warmup_ratio=0.1")
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 warm-up steps
    assert lrs[55] == pytest.approx(0.5) and lrs[99] < 1e-3  # cosine from step 10 to 100, down to 0


def test_schedule_warms_up_again_when_the_compressor_starts(cfg_factory):
    def lrs(*overrides):
        return _lrs(cfg_factory, "model.uncompressed_steps=40", "optim.warmup_steps=4", *overrides)

    one = lrs()
    assert one[3] == pytest.approx(1.0) and one[52] == pytest.approx(0.5)  # one cosine over steps 4..100
    two = lrs("optim.compression_warmup_steps=10")
    assert two[:40] == pytest.approx(one[:40])  # the plain phase is untouched
    assert two[40:50] == pytest.approx([one[s] * (s - 39) / 10 for s in range(40, 50)])  # 0.1 … 1.0 of it
    assert two[50:] == pytest.approx(one[50:])  # then the same cosine
    assert lrs("optim.compression_warmup_steps=10", "model.uncompressed_steps=0") == pytest.approx(one)


def test_the_step_script_runs_on_the_tiny_backbone(tmp_path):
    """scripts/train_step_7b.py's code path on CPU; the 7B run itself needs a GPU (test below)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_step_7b
    finally:
        sys.path.pop(0)
    out = train_step_7b.main(["--tiny", "--frames", "8", "--steps", "1", "--out", str(tmp_path / "r.json")])
    assert out["tokens_per_frame"] == 16 and out["visual_tokens"] == 128
    assert out["kv_tokens"] == 4 + 128 // 16  # prefix sink + one beacon per 16 raw tokens (ratio 16)
    assert len(out["losses"]) == 1 and out["losses"][0] > 0
    assert json.loads((tmp_path / "r.json").read_text()) == out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_bf16_step_of_the_7b_geometry_with_vst_on_one_gpu(tmp_path):
    out_file = tmp_path / "step_7b.json"
    done = subprocess.run([sys.executable, "scripts/train_step_7b.py", "--frames", "128", "--steps", "2",
                           "--out", str(out_file)], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(out_file.read_text())
    assert out["tokens_per_frame"] == 144 and out["visual_tokens"] == 128 * 144
    assert out["kv_tokens"] < 128 * 144 // 2  # compressed at ratio 16: sink + 1152 beacons
    assert all(torch.isfinite(torch.tensor(out["losses"])))
    assert out["peak_memory_gb"] * 2**30 < torch.cuda.get_device_properties(0).total_memory


def test_attn_implementation_auto_uses_flash_attention_when_it_can(monkeypatch):
    from vlc.backbone import llm

    monkeypatch.setattr(llm.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(llm.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert llm.resolve_attn_implementation("auto") == "flash_attention_2"
    monkeypatch.setattr(llm.importlib.util, "find_spec", lambda name: None)  # not installed
    assert llm.resolve_attn_implementation("auto") == "sdpa"
    monkeypatch.setattr(llm.torch.cuda, "is_available", lambda: False)
    assert llm.resolve_attn_implementation("auto") == "sdpa" and llm.resolve_attn_implementation("eager") == "eager"


def test_uncompressed_phase_is_for_the_from_scratch_backbone_only():
    """model=tiny (random init) trains 500 plain steps before compressing; pretrained models none."""
    from omegaconf import OmegaConf

    from vlc.run import CONFIG_DIR

    assert OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml").uncompressed_steps == 500
    assert OmegaConf.load(CONFIG_DIR / "model" / "videoxl_7b.yaml").uncompressed_steps == 0
