"""Compressor chains: token counts compose, pixels stop once frames merge, in-LLM last stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vlc.compressors import CacheCompressor, build_compressor
from vlc.compressors.chain import CompressorChain
from vlc.compressors.diffp import DifferentialFramePruning
from vlc.compressors.moviechat import MovieChatMemory
from vlc.compressors.pool import SpatialPool
from vlc.tokens import FrameTokens

CONFIGS = Path(__file__).parents[1] / "configs" / "compressor"
D = 8
DIFFP = {"_target_": "vlc.compressors.diffp.DifferentialFramePruning", "_partial_": True}
POOL = {"_target_": "vlc.compressors.pool.SpatialPool", "_partial_": True, "stride": 2}
MOVIECHAT = {"_target_": "vlc.compressors.moviechat.MovieChatMemory", "_partial_": True,
             "short_len": 4, "merge_to": 2, "long_len": 64, "num_base_pos": 8}


def square_video(T: int) -> tuple[FrameTokens, torch.Tensor]:
    """A white 16-px square moving one patch right per frame along row 1 of a 4×4 grid (64 px)."""
    frames = torch.full((1, T, 3, 64, 64), 0.2)
    for t in range(T):
        frames[0, t, :, 16:32, (t % 4) * 16 : (t % 4) * 16 + 16] = 1.0
    pixels = (frames - 0.5) / 0.5  # (1, T, 3, 64, 64) normalised with mean = std = 0.5
    x = FrameTokens(torch.randn(1, T, 16, D), torch.ones(1, T, 16, dtype=torch.bool),
                    torch.arange(T, dtype=torch.float32)[None], (4, 4))
    return x, pixels


def test_example_config_is_diffp_then_pool_and_counts_compose():
    chain = build_compressor(OmegaConf.load(CONFIGS / "chain.yaml"), dim=D)
    assert isinstance(chain, CompressorChain)
    assert [type(s) for s in chain.stages] == [DifferentialFramePruning, SpatialPool]
    assert chain.kind == "token" and chain.reads_pixels and chain.keeps_frames and chain.needs_grid

    x, pixels = square_video(4)
    out = chain(x, pixels)
    # diffp keeps [all 16, (1,0)+(1,1), (1,1)+(1,2), (1,2)+(1,3)]; 2×2 pooling maps patch (1, c) to
    # cell (0, c // 2) and a cell is real when any patch under it is: [4, 1, 2, 1] = 8 tokens.
    assert out.token_mask.sum(-1).tolist() == [[4, 1, 2, 1]]
    assert out.grid == (2, 2)
    composed = chain.stages[1](chain.stages[0](x, pixels), pixels)
    assert torch.equal(out.token_mask, composed.token_mask)
    torch.testing.assert_close(out.tokens, composed.tokens)


def test_moviechat_then_pool_counts_compose():
    # 40 frames → 9 × 2 + 2 = 20 memory frames; pooling 4×4 → 2×2: 20 × 4 = 80 tokens.
    chain = build_compressor({"_target_": "vlc.compressors.chain.CompressorChain", "_partial_": True,
                              "stages": [MOVIECHAT, POOL]}, dim=D)
    x, pixels = square_video(40)
    out = chain(x, pixels)
    assert out.tokens.shape == (1, 20, 4, D)
    assert out.num_tokens().tolist() == [80]
    assert out.num_tokens().tolist() == chain.stages[1](chain.stages[0](x)).num_tokens().tolist()


def test_pixels_are_withheld_once_frames_merge():
    x, pixels = square_video(8)
    # diffp → diffp: frames unchanged, so the second stage still gets pixels (and changes nothing).
    twice = CompressorChain(D, [DIFFP, DIFFP])(x, pixels)
    assert torch.equal(twice.token_mask, DifferentialFramePruning()(x, pixels).token_mask)
    # moviechat → diffp: the memory frames are not the frames the pixels show; refused when built,
    # from the stages' declarations (moviechat.keeps_frames is False, diffp.reads_pixels True).
    with pytest.raises(ValueError, match=r"stages\[1\] \(DifferentialFramePruning\) compares pixels"):
        CompressorChain(D, [MOVIECHAT, DIFFP])


class InLLMStage(CacheCompressor):
    """Stands in for vst: identity before the LLM, compresses in prefill."""

    streaming = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim, self.calls = dim, []
        self.beacon = nn.Parameter(torch.zeros(dim))

    def forward(self, x: FrameTokens, pixels: torch.Tensor | None = None, question=None) -> FrameTokens:
        self.calls.append(("forward", x.num_tokens().tolist()))
        return x

    def bind(self, llm, tokenizer) -> None:
        self.calls.append(("bind", llm, tokenizer))

    def prefill(self, llm, sink, sink_mask, visual):
        self.calls.append(("prefill", llm))
        return "context"


def test_last_in_llm_stage_is_delegated_to():
    stage = {"_target_": f"{__name__}.InLLMStage", "_partial_": True}
    chain = build_compressor({"_target_": "vlc.compressors.chain.CompressorChain", "_partial_": True,
                              "stages": [DIFFP, stage]}, dim=D)
    last = chain.stages[-1]
    assert isinstance(last, InLLMStage) and last.dim == D
    assert chain.streaming is False  # diffp needs the whole video at once
    assert chain.kind == "cache" and chain.sits == "encoder"
    chain.bind("llm", "tok")
    assert chain.prefill("llm", None, None, []) == "context"
    x, pixels = square_video(4)
    out = chain(x, pixels)
    assert last.calls == [("bind", "llm", "tok"), ("prefill", "llm"), ("forward", [22])]  # 16 + 3 × 2
    assert out.num_tokens().tolist() == [22]
    assert "stages.1.beacon" in dict(chain.named_parameters())

    with pytest.raises(ValueError, match="only the last stage"):
        CompressorChain(D, [stage, DIFFP])
    with pytest.raises(ValueError, match=r"stages=\[\] \(chain\)"):
        CompressorChain(D, [])
