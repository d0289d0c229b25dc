"""Video-XL's released checkpoint layout into vlc: a tiny checkpoint written key by key as Video-XL's
LlavaQwenForCausalLM saves it (config.json, two safetensors shards, the tokenizer) loads with every
key placed, and vst with those beacons gives the logits vst gives when handed the tensors directly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hf_tiny import VIDEOXL_TINY, random_frames, save_tiny_videoxl, videoxl_tensors

from vlc.backbone.hf import build_backbone
from vlc.backbone.hf.videoxl import PROMPT, VST_TARGET, load_beacons
from vlc.backbone.tokenizer import build_tiny_tokenizer
from vlc.compressors.vst import VisualSummarizationTokens

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return save_tiny_videoxl(tmp_path_factory.mktemp("videoxl"))


@pytest.fixture(scope="module")
def vxl(written):
    return build_backbone("videoxl", str(written[0]), dtype="float32", attn_implementation="sdpa")


def load(path):
    return build_backbone("videoxl", str(path), dtype="float32", attn_implementation="sdpa")


def test_every_key_is_placed_where_vlc_keeps_it(vxl, written):
    """No missing or unexpected key (the loader raises on either); each tensor of the file is found,
    unchanged, in exactly one vlc part."""
    _, tensors = written
    encoder, projector, llm = vxl.encoder.state_dict(), vxl.projector.state_dict(), vxl.llm.state_dict()
    beacons = vxl.pretrained_compressor_state[VST_TARGET]
    inner = "" if any(k.startswith("vision_model.") for k in encoder) else "vision_model."
    placed = 0
    for key, value in tensors.items():
        if key.startswith("model.vision_tower.vision_tower."):
            got = encoder[key.removeprefix("model.vision_tower.vision_tower." + inner)]
        elif key.startswith("model.mm_projector."):
            got = projector[key.removeprefix("model.mm_projector.")]
        elif key == "model.beacon_embed_tokens.weight":
            got = beacons["beacon_embed"][None]
        elif "beacon_" in key:  # model.layers.N.self_attn.beacon_q_proj.weight → beacon_q.N.weight
            layer, which, kind = key.split(".")[2], key.split(".")[4][len("beacon_")], key.split(".")[5]
            got = beacons[f"beacon_{which}.{layer}.{kind}"]
        else:
            got = llm[key]
        assert torch.equal(got, value), key
        placed += 1
    assert placed == len(tensors) == 83 and vxl.left_out == []
    # ... and nothing vlc holds is left unset: CLIP 39, projector 4, Qwen2 27, beacons 13.
    assert len(encoder) + len(projector) + len(llm) + len(beacons) == 39 + 4 + 27 + 13


def test_video_layout_and_settings(vxl):
    assert vxl.grid == (6, 6) and vxl.tokens_per_frame == 36 and vxl.llm_tokens_per_frame == 9
    assert vxl.pooled_grid((24, 24)) == (12, 12)  # CLIP-L/14 at 336 px: 576 patches → Video-XL's 144 per frame
    assert vxl.vst_settings == {"window": 16, "ratios": [2, 4, 8], "ratio": 8}
    assert vxl.prompt_template == PROMPT
    assert PROMPT["prefix"] == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    frames = random_frames(2, 3, size=30)  # shortest side → 24, centre crop 24
    ft, pixels = vxl.encode(frames, torch.tensor([[True, True, True], [True, False, False]]), torch.zeros(2, 3))
    assert pixels.shape == (2, 3, 3, 24, 24) and ft.tokens.shape == (2, 3, 36, 64)
    assert vxl.visual_span(vxl.project(ft)).mask.sum(1).tolist() == [27, 9]  # 9 per frame, no separator


def reference_llm_and_span(tensors, frames):
    """The same tensors put into transformers' classes by hand (no vlc loader) and the visual span
    computed from them by hand: CLIP layer -2 without CLS → Linear-GELU-Linear → 2x2 average pool."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

    c, q = VIDEOXL_TINY["clip"], VIDEOXL_TINY["qwen2"]
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    llm = Qwen2ForCausalLM._from_config(Qwen2Config(
        vocab_size=vocab, hidden_size=q["hidden"], intermediate_size=q["intermediate"],
        num_hidden_layers=q["layers"], num_attention_heads=q["heads"], num_key_value_heads=q["kv_heads"],
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
    ), attn_implementation="sdpa").eval()
    visual = ("model.vision_tower", "model.mm_projector")
    text_keys = {k: v for k, v in tensors.items() if not k.startswith(visual) and "beacon_" not in k}
    llm.load_state_dict(text_keys, strict=True)

    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=c["hidden"], intermediate_size=c["intermediate"], num_hidden_layers=c["layers"],
        num_attention_heads=1, image_size=c["image"], patch_size=c["patch"])).eval()
    inner = "" if any(k.startswith("vision_model.") for k in clip.state_dict()) else "vision_model."
    prefix = "model.vision_tower.vision_tower." + inner
    clip.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)

    x = frames[0].float() / 255  # (T, 3, 24, 24): the processor's size, so no resize or crop
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    h = clip(x, output_hidden_states=True).hidden_states[-2][:, 1:]  # (T, 36, 64)
    h = F.linear(F.gelu(F.linear(h, tensors["model.mm_projector.0.weight"], tensors["model.mm_projector.0.bias"])),
                 tensors["model.mm_projector.2.weight"], tensors["model.mm_projector.2.bias"])
    T, side = h.shape[0], c["image"] // c["patch"]
    h = F.avg_pool2d(h.reshape(T, side, side, -1).permute(0, 3, 1, 2), 2)  # (T, D, 3, 3)
    return llm, h.permute(0, 2, 3, 1).reshape(1, T * 9, -1)


def vst_logits(llm, tokenizer, vst, span, text: str):
    """prefix → vst prefill of the span → the question and answer continued from its cache."""
    prefix = tokenizer(PROMPT["prefix"], add_special_tokens=False, return_tensors="pt").input_ids
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    embed = llm.get_input_embeddings()
    visual = [(span, torch.ones(span.shape[:2], dtype=torch.long))]
    ctx = vst.prefill(llm, embed(prefix), torch.ones_like(prefix), visual)
    positions = ctx.next_position[:, None] + torch.arange(ids.shape[1])[None]
    out = llm(inputs_embeds=embed(ids), past_key_values=ctx.cache, position_ids=positions,
              attention_mask=torch.cat([ctx.attention_mask, torch.ones_like(ids)], 1))
    return out.logits, ctx


@torch.no_grad()
def test_vst_with_videoxl_weights_equals_vst_given_the_tensors(vxl, written):
    _, tensors = written
    frames = random_frames(1, 4, size=24, seed=7)
    text = "\nWhat color is it?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"

    ft, _ = vxl.encode(frames, torch.ones(1, 4, dtype=torch.bool), torch.arange(4.0)[None])
    span = vxl.visual_span(vxl.project(ft))
    ours_vst = VisualSummarizationTokens(window=16, ratio=4).eval()
    ours_vst.bind(vxl.llm, vxl.tokenizer)
    load_beacons(ours_vst, vxl)
    ours, ctx = vst_logits(vxl.llm, vxl.tokenizer, ours_vst, span.embeds, text)

    ref_llm, ref_span = reference_llm_and_span(tensors, frames)
    ref_vst = VisualSummarizationTokens(window=16, ratio=4).eval()
    ref_vst.bind(ref_llm, build_tiny_tokenizer())
    for i in range(VIDEOXL_TINY["qwen2"]["layers"]):
        for which in "qkv":
            for kind in ("weight", "bias"):
                getattr(getattr(ref_vst, f"beacon_{which}")[i], kind).copy_(
                    tensors[f"model.layers.{i}.self_attn.beacon_{which}_proj.{kind}"])
    ref_vst.beacon_embed.copy_(tensors["model.beacon_embed_tokens.weight"][0])
    ref, _ = vst_logits(ref_llm, build_tiny_tokenizer(), ref_vst, ref_span, text)

    assert (span.embeds - ref_span).abs().max().item() <= 1e-5
    assert (ours - ref).abs().max().item() <= 1e-5
    # 36 visual tokens in windows of 16 at ratio 4: 4 + 4 + 1 beacons after the 15-token system/user prefix.
    assert ours_vst.last_windows == [(16, 4, 4), (16, 4, 4), (4, 4, 1)] and ctx.length == 15 + 9
    # The released beacons are not the base copies vst starts from: they change the answer's logits.
    fresh = VisualSummarizationTokens(window=16, ratio=4).eval()
    fresh.bind(vxl.llm, vxl.tokenizer)
    assert (vst_logits(vxl.llm, vxl.tokenizer, fresh, span.embeds, text)[0] - ours).abs().max().item() > 1e-3


@pytest.mark.parametrize("change,message", [
    ("drop:model.norm.weight", r"missing keys \['model.norm.weight'\]"),
    ("drop:model.layers.1.self_attn.beacon_v_proj.bias", r"missing \['model.layers.1.self_attn.beacon_v_proj.bias'\]"),
    ("drop:model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc2.bias",
     r"missing keys \['model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc2.bias'\]"),
    ("drop:model.beacon_embed_tokens.weight", r"missing key 'model.beacon_embed_tokens.weight'"),
    ("add:model.vision_resampler.pool.weight", r"unexpected keys \['model.vision_resampler.pool.weight'\]"),
    ("add:model.layers.0.self_attn.beacon_o_proj.weight",
     r"unexpected keys \['model.layers.0.self_attn.beacon_o_proj.weight'\]"),
])
def test_a_missing_or_unexpected_key_is_named(tmp_path, change, message):
    action, key = change.split(":")
    tensors = videoxl_tensors(len(build_tiny_tokenizer()))
    if action == "drop":
        del tensors[key]
    else:
        tensors[key] = torch.zeros(4)
    path, _ = save_tiny_videoxl(tmp_path, tensors=tensors)
    with pytest.raises(ValueError, match=message):
        load(path)


def test_unsupported_beacon_settings_are_refused(tmp_path):
    import json

    path, _ = save_tiny_videoxl(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "beacon_param": ["q", "k", "v", "o"]}))
    with pytest.raises(ValueError, match=r"beacon_param \['q', 'k', 'v', 'o'\] has \['o'\]; vlc's vst"):
        load(path)
    with pytest.raises(FileNotFoundError, match="no Video-XL checkpoint folder at /nonexistent"):
        load("/nonexistent/videoxl")


def test_vlc_convert_writes_the_same_weights_in_vlcs_layout(vxl, written, tmp_path):
    from vlc.convert import main

    main(["videoxl", str(written[0]), str(tmp_path / "videoxl.ckpt"), "--dtype", "float32"])
    ckpt = torch.load(tmp_path / "videoxl.ckpt", weights_only=True)
    state, meta = ckpt["state_dict"], ckpt["vlc_convert"]
    assert meta["source"] == "videoxl" and meta["compressor"] == {"window": 16, "ratios": [2, 4, 8], "ratio": 8}
    assert meta["config"]["beacon_param"] == ["q", "k", "v"]
    parts = {p: sum(k.startswith(p + ".") for k in state) for p in ("backbone.encoder", "backbone.projector",
                                                                    "backbone.llm", "compressor")}
    assert parts == {"backbone.encoder": len(vxl.encoder.state_dict()), "backbone.projector": 4,
                     "backbone.llm": len(vxl.llm.state_dict()), "compressor": 13}
    assert torch.equal(state["compressor.beacon_k.1.weight"],
                       written[1]["model.layers.1.self_attn.beacon_k_proj.weight"])
    assert torch.equal(state["backbone.llm.lm_head.weight"], written[1]["lm_head.weight"])


@torch.no_grad()
def test_model_config_path_loads_the_beacons_into_compressor_vst(written):
    """``model=videoxl_7b_released compressor=vst``: the model binds vst to the Qwen2 LM and loads
    Video-XL's beacons into it; its pipeline's answer logits are those of vst with the tensors."""
    from hf_tiny import answer_logits

    from vlc.model.video_llm import VideoLLM

    path, tensors = written
    model = VideoLLM(backbone={"family": "videoxl", "name_or_path": str(path), "dtype": "float32",
                               "attn_implementation": "sdpa"},
                     compressor={"_target_": VST_TARGET, "window": 16, "ratio": 4}).eval()
    vst = model.compressor
    assert torch.equal(vst.beacon_v[1].bias, tensors["model.layers.1.self_attn.beacon_v_proj.bias"])
    assert torch.equal(vst.beacon_embed, tensors["model.beacon_embed_tokens.weight"][0])
    frames = random_frames(1, 4, size=24, seed=7)
    ours, length, _ = answer_logits(model.pipeline, frames, "What color is it?", "red")
    # Through VideoLLM the sink is the prefix (15 tokens), then 9 beacons for 36 visual tokens.
    assert length == 15 + 9 and vst.last_windows == [(16, 4, 4), (16, 4, 4), (4, 4, 1)]
    by_hand = VisualSummarizationTokens(window=16, ratio=4).eval()
    by_hand.bind(model.backbone.llm, model.backbone.tokenizer)
    load_beacons(by_hand, model.backbone)
    ft, _ = model.backbone.encode(frames, torch.ones(1, 4, dtype=torch.bool), torch.arange(4.0)[None])
    span = model.backbone.visual_span(model.backbone.project(ft))
    ref, _ = vst_logits(model.backbone.llm, model.backbone.tokenizer, by_hand, span.embeds,
                        "\nWhat color is it?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n")
    assert (ours - ref).abs().max().item() <= 1e-5
