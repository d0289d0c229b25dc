"""Encoder geometry, and the real loading paths (hub name or local directory) on tiny saved models."""

from __future__ import annotations

import timm
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from vlc.backbone.encoder import VisionEncoder
from vlc.backbone.llm import build_llm
from vlc.backbone.tokenizer import VIDEO_TOKEN, build_tiny_tokenizer, load_tokenizer
from vlc.model.video_llm import VideoLLM
from vlc.run import build_model

from conftest import fake_batch, option_scores

TINY_VIT = dict(name="vit_tiny_patch16_224", img_size=32, model_kwargs=dict(patch_size=8, embed_dim=48, depth=3, num_heads=2))


def test_encoder_drops_cls_and_keeps_grid():
    torch.manual_seed(0)
    enc = VisionEncoder(layer=1, **TINY_VIT).eval()
    pixels = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    frame_mask = torch.tensor([[True, True, True], [True, True, False]])
    ft, norm = enc(pixels, frame_mask, torch.zeros(2, 3))
    assert ft.tokens.shape == (2, 3, 16, 48) and ft.grid == (4, 4) and norm.shape == (2, 3, 3, 32, 32)
    assert ft.token_mask.sum() == 5 * 16 and not ft.token_mask[1, 2].any()
    # Reference: run patch embed + blocks 0..1 by hand; drop the CLS token; no final norm.
    vit = enc.model
    with torch.no_grad():
        x = vit._pos_embed(vit.patch_embed(norm[0, :1]))
        x = vit.blocks[1](vit.blocks[0](vit.norm_pre(x)))
    torch.testing.assert_close(ft.tokens[0, 0], x[0, 1:], atol=1e-5, rtol=1e-5)
    assert len(vit.blocks) == 2  # blocks after the chosen layer were pruned


def test_encoder_pool_stride_and_bad_layer():
    enc = VisionEncoder(layer=-1, pool_stride=2, **TINY_VIT)
    assert enc.grid == (2, 2) and enc.tokens_per_frame == 4
    try:
        VisionEncoder(layer=7, **TINY_VIT)
    except ValueError as err:
        assert "encoder.layer=7" in str(err)
    else:
        raise AssertionError("an out-of-range layer must be rejected")


def test_encoder_loads_local_weight_file(tmp_path):
    """A full timm weight file (as a user has on disk) loads through checkpoint_path."""
    torch.manual_seed(0)
    full = timm.create_model(TINY_VIT["name"], img_size=32, num_classes=0, **TINY_VIT["model_kwargs"])
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    enc = VisionEncoder(layer=-1, checkpoint_path=str(path), **TINY_VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = full.forward_features(x)  # (2, 1 + 16, 48), final norm applied
        ref_pre_norm = full.blocks(full.norm_pre(full._pos_embed(full.patch_embed(x))))
    torch.testing.assert_close(enc.encode_normalized(x), ref_pre_norm[:, 1:])
    assert not torch.allclose(enc.encode_normalized(x), ref[:, 1:])  # the chosen layer's raw output, not normed


def test_llm_and_tokenizer_load_from_local_directory(tmp_path):
    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    cfg = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1)
    llm = build_llm(config=cfg, vocab_size=len(tok)).eval()
    llm.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    loaded = build_llm(name_or_path=str(tmp_path / "llm"), vocab_size=len(tok)).eval()
    tok2 = load_tokenizer(str(tmp_path / "llm"))
    text = f"<|im_start|>user\n{VIDEO_TOKEN}\nWhat color? red<|im_end|>"
    assert tok2(text).input_ids == tok(text).input_ids
    ids = torch.tensor([tok(text).input_ids])
    torch.testing.assert_close(llm(ids).logits, loaded(ids).logits)
    assert isinstance(loaded, type(AutoModelForCausalLM.from_config(llm.config)))


def test_missing_local_paths_are_named(tmp_path):
    for call in (lambda: build_llm(name_or_path=str(tmp_path / "nope")),
                 lambda: load_tokenizer(str(tmp_path / "nope")),
                 lambda: VisionEncoder(checkpoint_path=str(tmp_path / "nope.safetensors"), **TINY_VIT)):
        try:
            call()
        except FileNotFoundError as err:
            assert "nope" in str(err)
        else:
            raise AssertionError("a missing local path must raise FileNotFoundError")


def test_videollm_loaded_from_saved_parts_equals_in_memory(cfg_factory, tmp_path):
    """The path a real user takes (weights by local path) gives the same model as the in-memory one."""
    cfg = cfg_factory(["~data"])
    torch.manual_seed(0)
    mem = build_model(cfg).eval()
    mem.backbone.llm.save_pretrained(tmp_path / "llm")
    mem.backbone.tokenizer.save_pretrained(tmp_path / "llm")
    save_file({k: v.contiguous() for k, v in mem.backbone.encoder.model.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    hp = dict(mem.hparams)
    hp["encoder"] = {**hp["encoder"], "checkpoint_path": str(tmp_path / "vit.safetensors")}
    hp["llm"] = {**hp["llm"], "name_or_path": str(tmp_path / "llm"), "config": None}
    hp["tokenizer"] = {"name_or_path": str(tmp_path / "llm")}
    loaded = VideoLLM(**hp).eval()
    loaded.backbone.projector.load_state_dict(mem.backbone.projector.state_dict())
    batch = fake_batch()
    with torch.no_grad():
        torch.testing.assert_close(mem(batch), loaded(batch))
        torch.testing.assert_close(option_scores(mem, batch), option_scores(loaded, batch))
