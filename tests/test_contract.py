"""The compressor contract from the outside: a compressor written only in this file (one class and
a config naming it by ``_target_``) trains, evaluates and benches with no edit anywhere else — a
token compressor and a cache compressor. And a checkpoint can name no other code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from transformers import DynamicCache

from vlc.compressors import CacheCompressor, Compressor, UntrustedTargetError, build_compressor
from vlc.model.prefill import left_pad
from vlc.run import evaluate, train
from vlc.tokens import Context, FrameTokens, iter_cache_layers

from conftest import TINY_DATA

SHORT = [*TINY_DATA, "trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.progress_bar.refresh_rate=0"]


class EveryOtherFrame(Compressor):
    """Keeps frames 0, 2, 4, … and scales their tokens by a learned gain (a parameter to train)."""

    keeps_frames = False

    def __init__(self, dim: int, start: int = 0) -> None:
        super().__init__()
        if start not in (0, 1):
            raise ValueError(f"compressor.start={start}: 0 or 1")
        self.start = start
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, x: FrameTokens, pixels: Tensor | None = None, question=None) -> FrameTokens:
        keep = slice(self.start, None, 2)
        return FrameTokens(x.tokens[:, keep] * self.gain, x.token_mask[:, keep], x.times[:, keep], x.grid)


class SinkAndRecent(CacheCompressor):
    """KV-cache eviction in the spirit of StreamingLLM: prefill everything once, then keep the
    prefix (the attention sink) and the last ``recent`` visual entries. Keys stay rotated for their
    original positions, so the text continues after the full length."""

    def __init__(self, recent: int = 8) -> None:
        super().__init__()
        self.recent = recent

    def prefill(self, llm, sink, sink_mask, visual) -> Context:
        chunks = list(visual)
        vis = torch.cat([e for e, _ in chunks], 1)
        mask = torch.cat([m for _, m in chunks], 1).bool()
        S = sink.shape[1]
        rows = [torch.cat([sink[b], vis[b][mask[b]]]) for b in range(sink.shape[0])]
        if len({r.shape[0] for r in rows}) != 1:
            raise ValueError("SinkAndRecent keeps one length per batch; use batches of equal clips")
        embeds, attention = left_pad(rows)
        out = llm.model(inputs_embeds=embeds, attention_mask=attention, use_cache=True,
                        past_key_values=DynamicCache(config=llm.config))
        keep = torch.cat([torch.arange(S), torch.arange(max(S, embeds.shape[1] - self.recent), embeds.shape[1])])
        cache = DynamicCache()
        for i, (k, v) in enumerate(iter_cache_layers(out.past_key_values)):
            cache.update(k[:, :, keep], v[:, :, keep], i)
        B = embeds.shape[0]
        return Context(cache, torch.ones(B, len(keep), dtype=torch.long), torch.full((B,), embeds.shape[1]),
                       mask.sum(1))


TOKEN = f"{EveryOtherFrame.__module__}.EveryOtherFrame"
CACHE = f"{SinkAndRecent.__module__}.SinkAndRecent"


@pytest.mark.parametrize("target, per_clip_kv", [(TOKEN, 4 + 4 * 16), (CACHE, 4 + 8)])
def test_a_compressor_of_this_file_trains_evaluates_and_benches(cfg_factory, tmp_path, target, per_clip_kv):
    """8-frame clips of 16 tokens after the 4-token prefix: every other frame keeps 4 frames;
    sink + recent keeps the prefix and 8 entries."""
    cfg = cfg_factory(["compressor=none", f"compressor._target_={target}", *SHORT])
    metrics = train(cfg)
    assert metrics["train_steps"] == 2 and metrics["val/kv_tokens"] == per_clip_kv
    ckpt = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    evaluated = evaluate(cfg_factory([f"ckpt_path={ckpt}", *TINY_DATA], name="eval"))
    assert evaluated["val/acc"] == metrics["val/acc"] and evaluated["val/kv_tokens"] == per_clip_kv
    assert evaluated["compressor"] == target.rsplit(".", 1)[1]

    from vlc.evaluation.bench import main

    rows = main(["compressor=none", f"compressor._target_={target}", "--frames", "8", "--no-warmup",
                 "--out", str(tmp_path / "bench"), "--cache", str(tmp_path / "videos")])
    assert [r["kv_tokens"] for r in rows] == [per_clip_kv]


def test_the_contract_is_declared_not_probed():
    """Nothing outside vlc/compressors asks a compressor what it is by hasattr/getattr."""
    src = Path(__file__).parents[1] / "src" / "vlc"
    offenders = []
    for path in src.rglob("*.py"):
        if "compressors" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if ("hasattr(" in line or "getattr(" in line) and "compressor" in line:
                offenders.append(f"{path.relative_to(src)}:{n}: {line.strip()}")
    assert offenders == []


HOSTILE = ["builtins.open", "torch.load", "shutil.copyfile", "os.system", "vlc.compressors.vst.torch.load",
           "vlc.compressors.base.importlib.import_module", "subprocess.run"]


@pytest.mark.parametrize("target", HOSTILE)
def test_a_config_cannot_name_other_code(target, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    cfg = {"_target_": target, "file": str(victim), "mode": "w", "args": ["touch", str(tmp_path / "pwned")]}
    with pytest.raises(UntrustedTargetError, match="refusing to build compressor _target_|cannot import"):
        build_compressor(cfg, dim=8)
    nested = {"_target_": "vlc.compressors.chain.CompressorChain",
              "stages": [{"_target_": "vlc.compressors.none.Identity", "x": {"_target_": target}}]}
    with pytest.raises(UntrustedTargetError):
        build_compressor(nested, dim=8)
    assert victim.read_text() == "intact" and not (tmp_path / "pwned").exists()


def test_hydra_only_keys_are_refused():
    with pytest.raises(ValueError, match=r"keys \['_args_'\] are not supported"):
        build_compressor({"_target_": "vlc.compressors.pool.SpatialPool", "_args_": [2]}, dim=8)


def test_unknown_setting_names_the_key():
    with pytest.raises(ValueError, match="compressor.strde: SpatialPool takes no such setting; it takes stride, mode"):
        build_compressor({"_target_": "vlc.compressors.pool.SpatialPool", "strde": 2}, dim=8)


def test_checkpoint_hparams_with_hostile_targets_are_refused(cfg_factory, tmp_path):
    """A real checkpoint whose saved compressor config names code that writes a file: eval.py and
    load_from_checkpoint refuse it before calling anything, naming the target; the file is untouched."""
    from vlc.model.video_llm import VideoLLM

    cfg = cfg_factory(["compressor=pool", *TINY_DATA, "trainer.max_steps=1", "callbacks.progress_bar.refresh_rate=0"])
    train(cfg)
    good = torch.load(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=True)
    victim = tmp_path / "victim.txt"
    for target in ("builtins.open", "torch.load", "shutil.copyfile"):
        victim.write_text("intact")
        bad = dict(good)
        bad["hyper_parameters"] = {**good["hyper_parameters"],
                                   "compressor": {"_target_": target, "file": str(victim), "mode": "w",
                                                  "src": "/etc/hostname", "dst": str(victim)}}
        path = tmp_path / f"{target}.ckpt"
        torch.save(bad, path)
        with pytest.raises(UntrustedTargetError, match=f"refusing to build compressor _target_ '{target}'"):
            VideoLLM.load_from_checkpoint(str(path), map_location="cpu")
        with pytest.raises(UntrustedTargetError, match=f"'{target}'"):
            evaluate(cfg_factory([f"ckpt_path={path}", *TINY_DATA], name="eval"))
        assert victim.read_text() == "intact"
    assert json.loads(Path(cfg.paths.output_dir, "metrics.json").read_text())["compressor"] == "SpatialPool"
