"""STC / STP connectors: token counts, odd frame counts, padding isolation, gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vlc.compressors import build_compressor
from vlc.compressors.stc import STCConnector
from vlc.tokens import FrameTokens

CONFIGS = Path(__file__).parents[1] / "configs" / "compressor"
DIM = 8  # tiny width: the counts depend on the grid and frames only


def frames(B: int, T: int, h: int = 24, w: int = 24, real: list[int] | None = None, seed: int = 0) -> FrameTokens:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, T, h * w, DIM, generator=g)
    real = real or [T] * B
    frame_mask = torch.arange(T)[None] < torch.tensor(real)[:, None]  # (B, T)
    times = torch.arange(T, dtype=torch.float32)[None].expand(B, T) * 0.5
    return FrameTokens(tokens, frame_mask[..., None].expand(B, T, h * w).contiguous(), times.contiguous(), (h, w))


def build(name: str, **override) -> STCConnector:
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    cfg.update(override)
    return build_compressor(cfg, dim=DIM).eval()


@pytest.mark.parametrize(
    "name, T, tokens, grid",
    [("stc", 8, 845, (13, 13)), ("stc", 16, 1521, (13, 13)), ("stc_v35", 8, 576, (12, 12)),
     ("stc_v35", 16, 1152, (12, 12)), ("stp", 8, 576, (12, 12))],
)
def test_token_counts(name, T, tokens, grid):
    torch.manual_seed(0)
    with torch.no_grad():
        out = build(name, depth=1)(frames(1, T))
    assert out.grid == grid
    assert out.tokens.shape == (1, tokens // (grid[0] * grid[1]), grid[0] * grid[1], DIM)
    assert int(out.num_tokens()) == tokens


def test_odd_frames_repeat_the_last():
    torch.manual_seed(0)
    with torch.no_grad():
        for name, T_out in [("stc", 5), ("stc_v35", 4)]:
            stc = build(name, depth=1)
            odd = frames(1, 7)
            out = stc(odd)
            assert out.tokens.shape[1] == T_out and out.token_mask.all()
            # 7 frames == the same 7 frames with the last repeated.
            even = FrameTokens(torch.cat([odd.tokens, odd.tokens[:, -1:]], 1),
                               torch.ones(1, 8, 576, dtype=torch.bool),
                               torch.cat([odd.times, odd.times[:, -1:]], 1), odd.grid)
            torch.testing.assert_close(out.tokens, stc(even).tokens)
    # padding 0: the last output frame is frame 6 and its repeat → time 3.0 s
    assert out.times.tolist() == [[0.25, 1.25, 2.25, 3.0]]


def test_times_are_means_of_covered_frames():
    with torch.no_grad():
        out = build("stc", depth=1)(frames(1, 8))
    # padding 1 pairs (pad,0) (1,2) (3,4) (5,6) (7,pad); frame t is at 0.5·t s
    assert out.times.tolist() == [[0.0, 0.75, 1.75, 2.75, 3.5]]


def test_stp_has_no_conv_parameters():
    stp, stc = build("stp"), build("stc")
    assert not any(isinstance(m, torch.nn.Conv3d) for m in stp.modules())
    assert sum(p.numel() for p in stp.sampler.parameters()) == 0
    assert sum(p.numel() for p in stc.sampler.parameters()) > 0


@pytest.mark.parametrize("name", ["stc", "stc_v35", "stp"])
@pytest.mark.parametrize("real", [6, 5])
def test_padded_frames_do_not_leak(name, real):
    torch.manual_seed(0)
    stc = build(name, depth=1)
    batch = frames(2, 8, h=6, w=6, real=[8, real], seed=1)
    alone = FrameTokens(batch.tokens[1:, :real], batch.token_mask[1:, :real], batch.times[1:, :real], batch.grid)
    with torch.no_grad():
        got, want = stc(batch), stc(alone)
    T = want.tokens.shape[1]
    torch.testing.assert_close(got.tokens[1, :T], want.tokens[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.times[1, :T], want.times[0])
    assert got.token_mask[1, :T].all() and not got.token_mask[1, T:].any()


@pytest.mark.parametrize("name", ["stc", "stp"])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    stc = build(name, depth=2).train()
    out = stc(frames(1, 4, h=6, w=6))
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()
    for pname, p in stc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_errors_name_the_problem():
    x = frames(1, 4, h=4, w=4)
    with pytest.raises(ValueError, match="grid"):
        build("stc", depth=1)(x.replace(grid=None))
    holes = x.token_mask.clone()
    holes[0, 1] = False
    with pytest.raises(ValueError, match="trail"):
        build("stc", depth=1)(x.replace(token_mask=holes))
    with pytest.raises(ValueError, match="downsample"):
        STCConnector(DIM, downsample="max")


def test_times_stay_full_precision_under_autocast():
    x = frames(1, 4, h=4, w=4)
    x = x.replace(times=x.times + 1000.0)  # bf16 resolves 1000 s only to 4 s
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build("stc", depth=1)(x)
    assert out.times.dtype == torch.float32
    assert out.times.tolist() == [[1000.0, 1000.75, 1001.5]]
