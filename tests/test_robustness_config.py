"""Config mistakes read as one paragraph before anything is built; every shipped config passes;
the checker and the compressors' own constructors agree; no compressor needs a particular T."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from vlc.compressors import build_compressor
from vlc.config_check import ConfigError, check_config
from vlc.run import CONFIG_DIR, build_model
from vlc.tokens import FrameTokens

from conftest import compose_config, fake_batch

COMPRESSORS = sorted(p.stem for p in (CONFIG_DIR / "compressor").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_every_compressor_config_passes(cfg_factory, compressor):
    check_config(cfg_factory([f"compressor={compressor}"]))


GPU_EXPERIMENTS = {"videoxl_stage1", "videoxl_stage2", "videoxl_stage2_lora"}  # they select trainer=gpu


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes(cfg_factory, experiment):
    cfg = cfg_factory([f"experiment={experiment}"])
    if experiment in GPU_EXPERIMENTS and not torch.cuda.is_available():
        with pytest.raises(ConfigError) as info:  # refused before anything is built
            check_config(cfg)
        assert info.value.problems == ["trainer.accelerator=gpu but CUDA is not available on this machine; "
                                       "use trainer=cpu"]
        cfg = cfg_factory([f"experiment={experiment}", "trainer=cpu"])
    check_config(cfg)


QFORMER_THEN_POOL = ("compressor.stages=[{_target_: vlc.compressors.qformer.QFormer, _partial_: true}, "
                     "{_target_: vlc.compressors.pool.SpatialPool}]")
MOVIECHAT_THEN_DIFFP = ("compressor.stages=[{_target_: vlc.compressors.moviechat.MovieChatMemory, _partial_: true}, "
                        "{_target_: vlc.compressors.diffp.DifferentialFramePruning, _partial_: true}]")
VST_THEN_POOL = ("compressor.stages=[{_target_: vlc.compressors.vst.VisualSummarizationTokens, _partial_: true}, "
                 "{_target_: vlc.compressors.pool.SpatialPool}]")

# (overrides, a part of the message it must give; None: the overrides are valid)
INVALID = [
    (["compressor=vst", "compressor.ratio=0"],
     "compressor.ratio=0 (vst): raw tokens per beacon at inference, an integer in 1..window (window=1440)"),
    (["compressor=vst", "compressor.window=8", "compressor.ratio=16"], "compressor.ratio=16 (vst)"),
    (["compressor=vst", "compressor.ratios=[]"], "compressor.ratios=[] (vst): give at least one training ratio"),
    (["compressor=vst", "compressor.window=8", "compressor.ratio=4", "compressor.ratios=[2,16]"],
     "compressor.ratios=[2, 16] (vst): [16] outside 1..window (window=8)"),
    (["compressor=vst", "compressor.attention=xformers"],
     "compressor.attention='xformers' (vst): choose one of auto, sdpa, flash"),
    (["compressor=pool", "compressor.stride=0"],
     "compressor.stride=0 (pool): pooling factor per grid side, an integer >= 1"),
    (["compressor=pool", "compressor.mode=max"], "compressor.mode='max' (pool): choose avg or bilinear"),
    (["compressor=qformer", "compressor.mode=sliding", "compressor.window=8", "compressor.stride=9"],
     "compressor.stride=9 (qformer, sliding): frames between window starts, in 1..window (window=8)"),
    (["compressor=qformer", "compressor.mode=sliding", "compressor.window=0"],
     "compressor.window=0 (qformer, sliding): frames per window, an integer >= 1"),
    (["compressor=qformer", "compressor.heads=5"], "compressor.heads=5 (qformer): must divide the encoder width 96"),
    (["compressor=qformer", "compressor.mode=perceiver"],
     "compressor.mode='perceiver' (qformer): choose one of global, sliding, slots"),
    (["compressor=qformer_qa", "compressor.mode=slots"],
     "compressor.question_aware=true (qformer): needs mode global or sliding"),
    (["compressor=moviechat", "compressor.short_len=4"], None),  # merge_to 2 <= short_len 4
    (["compressor=moviechat", "compressor.merge_to=20"],
     "compressor.merge_to=20 (moviechat): a full short-term buffer of short_len=18 frames is merged down to merge_to"),
    (["compressor=moviechat", "compressor.long_len=300"],
     "compressor.long_len=300 (moviechat): must be in merge_to..num_base_pos² (2..256)"),
    (["compressor=moviechat", "compressor.mode=breakpoint"],
     "compressor.mode=breakpoint (moviechat): needs breakpoint_time"),
    (["compressor=stc_v35", "compressor.kernel=[2,8,8]"],
     "compressor.kernel=[2, 8, 8]: the 4x4 patch grid (+0 padding) is smaller than the spatial kernel"),
    (["compressor=stp", "compressor.padding=2"], "compressor.padding=2 (stp): an integer >= 0, at most half"),
    (["compressor=keyframe", "compressor.threshold=2"], "compressor.threshold=2 (keyframe): a cosine similarity"),
    (["compressor=budget", "compressor.max_tokens=0"], "compressor.max_tokens=0 (budget)"),
    (["+compressor.foo=1"], "compressor.foo: Identity takes no such setting; it takes none"),
    (["compressor=vst", "+compressor.windw=8"],
     "compressor.windw: VisualSummarizationTokens takes no such setting; it takes window, ratio, ratios, streaming, "
     "compress, attention"),
    (["compressor=chain", QFORMER_THEN_POOL],
     "compressor.stages[1] (SpatialPool) needs tokens on a patch grid, but an earlier stage (QFormer) returns none"),
    (["compressor=chain", MOVIECHAT_THEN_DIFFP],
     "compressor.stages[1] (DifferentialFramePruning) compares pixels of consecutive frames, so it must come before "
     "any stage that merges or drops frames (MovieChatMemory)"),
    (["compressor=chain", VST_THEN_POOL], "only the last stage may be a cache compressor"),
    (["compressor=chain", "compressor.stages=[{_target_: vlc.compressors.pool.SpatialPool, stride: 0}]"],
     "compressor.stages[0]: compressor.stride=0 (pool)"),
    (["compressor=chain", "compressor.stages=[]"], "compressor.stages=[] (chain)"),
    (["compressor._target_=vlc.compressors.nope.Nope"],
     "compressor._target_=vlc.compressors.nope.Nope: compressor _target_ 'vlc.compressors.nope.Nope': cannot import "
     "vlc.compressors.nope (No module named 'vlc.compressors.nope')"),
    (["compressor._target_=vlc.compressors.pool.Pool"],
     "compressor._target_=vlc.compressors.pool.Pool: refusing to build compressor _target_ "
     "'vlc.compressors.pool.Pool': it is not a subclass of vlc.compressors.base.Compressor"),
    (["compressor._target_=builtins.open"], "refusing to build compressor _target_ 'builtins.open'"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5: optimizer steps to train, an integer >= 1"),
    (["trainer.max_steps=abc"], "trainer.max_steps='abc': optimizer steps to train"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval=0: validate every this many training steps"),
    (["trainer.precision=bogus"], "trainer.precision='bogus': choose one of 32-true"),
    (["optim.lr=abc"], "optim.lr='abc': the learning rate, a number > 0"),
    (["optim.lr=-1"], "optim.lr=-1: the learning rate, a number > 0"),
    (["optim.warmup_steps=-10"], "optim.warmup_steps=-10: linear warm-up steps, an integer >= 0"),
    (["data.frame_size=0"], "data.frame_size=0: the side frames are resized to (an integer >= 1)"),
    (["seed=abc"], "seed='abc': an integer (the training seed)"),
    (["data.num_frames=null"], "data.num_frames=null and data.fps=null: set exactly one"),
    (["data.num_frames=0"], "data.num_frames=0: frames per video, an integer >= 1"),
    (["data.num_frames=null", "data.fps=0"], "data.fps=0: a rate in frames per second, > 0"),
    (["data.on_error=ignore"], "data.on_error='ignore': choose raise (stop at the first unreadable video) or skip"),
    (["data.backend=opencv"], "data.backend='opencv': choose one of decord, av"),
    (["data.max_skip_fraction=1.5"], "data.max_skip_fraction=1.5: a fraction in [0, 1]"),
    (["data.synthetic.task=shapes"], "data.synthetic task='shapes', expected one of ('needle', 'order', 'count', 'ground', 'rank')"),
    (["data.synthetic.frame_size=33"], "data.synthetic frame_size=33, expected an even number >= 8"),
    (["+data.chek_files=false"], "data.chek_files: VideoDataModule takes no such setting"),
    (["data=mc_json"], "data.train_file is not set (???); give it on the command line"),
    (["ckpt_path=/nowhere/last.ckpt"], "ckpt_path=/nowhere/last.ckpt: no checkpoint file there"),
]


@pytest.mark.parametrize("overrides, message", INVALID)
def test_invalid_values_are_named_with_what_would_be_right(cfg_factory, overrides, message):
    if message is None:
        check_config(cfg_factory(overrides))
        return
    with pytest.raises(ConfigError) as info:
        check_config(cfg_factory(overrides))
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text and text.startswith("invalid config (") and text.endswith("See docs/robustness.md.")


def test_all_problems_in_one_message(cfg_factory):
    with pytest.raises(ConfigError) as info:
        check_config(cfg_factory(["compressor=pool", "compressor.stride=0", "data.on_error=ignore", "data.backend=x"]))
    assert len(info.value.problems) == 3 and str(info.value).startswith("invalid config (3 problems): ")


# ---- the checker is the constructor ------------------------------------------------------------


def test_checker_reports_the_constructors_own_message(cfg_factory):
    """config_check builds the compressor (on the meta device), so its verdict and wording are the
    constructor's: there is no second copy of the rules to keep in agreement."""
    from vlc.compressors.vst import VisualSummarizationTokens

    with pytest.raises(ValueError) as direct:
        VisualSummarizationTokens(window=8, ratio=16)
    with pytest.raises(ConfigError) as checked:
        check_config(cfg_factory(["compressor=vst", "compressor.window=8", "compressor.ratio=16"]))
    assert checked.value.problems == [str(direct.value)]


# ---- no compressor needs the frame count to divide by anything -----------------------------------

SMALL = {"qformer": {"mode": "sliding", "window": 4, "stride": 3, "depth": 1},
         "qformer_qa": {"mode": "sliding", "window": 4, "stride": 4, "depth": 1},
         "moviechat": {"short_len": 4, "merge_to": 2}, "stc": {"depth": 1}, "stc_v35": {"depth": 1},
         "stp": {"depth": 1}, "budget": {"max_tokens": 20}, "keyframe": {"threshold": 0.5}}
PRE_LLM = [c for c in COMPRESSORS if c != "vst"]


@pytest.mark.parametrize("name", PRE_LLM)
@pytest.mark.parametrize("T, real", [(1, [1, 1]), (3, [3, 2]), (5, [5, 1])])
def test_odd_and_tiny_frame_counts_run(name, T, real):
    """T = 1, 3, 5 (odd; shorter than a qformer window; not a multiple of the stc kernel or the
    moviechat buffer), with a second sample padded shorter: every output is finite, every sample
    keeps at least one token, and output times stay within the real frames' times."""
    torch.manual_seed(0)
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "compressor" / f"{name}.yaml"), SMALL.get(name, {}))
    cfg = OmegaConf.to_container(cfg, resolve=False)
    if "question_dim" in cfg:
        cfg["question_dim"] = 128
    compressor = build_compressor(cfg, dim=96, out_dim=96, pixel_std=(0.5,) * 3, question_dim=128).eval()
    B, N = 2, 16
    frame_mask = torch.arange(T)[None] < torch.tensor(real)[:, None]  # (B, T)
    times = (torch.arange(T, dtype=torch.float32) * 0.5)[None].expand(B, T) * frame_mask
    x = FrameTokens(torch.randn(B, T, N, 96), frame_mask[..., None].expand(B, T, N).contiguous(),
                    times.contiguous(), (4, 4))
    pixels = torch.randn(B, T, 3, 32, 32)
    with torch.no_grad():
        if compressor.reads_question:
            out = compressor(x, pixels, question=(torch.randn(B, 5, 128), torch.ones(B, 5, dtype=torch.long)))
        else:
            out = compressor(x, pixels)
    assert torch.isfinite(out.tokens[out.token_mask]).all()
    assert (out.token_mask.flatten(1).sum(1) >= 1).all()
    last = torch.tensor([(r - 1) * 0.5 for r in real])
    real_times = out.times.masked_fill(~out.frame_mask, 0)
    assert (real_times <= last[:, None] + 1e-6).all() and (real_times >= 0).all()


def test_vst_runs_at_odd_and_tiny_frame_counts(cfg_factory):
    """vst's windows cut the visual span wherever it ends: the last window holds the remainder."""
    torch.manual_seed(0)
    model = build_model(cfg_factory(["~data", "compressor=vst", "compressor.window=24", "compressor.ratio=4",
                                     "compressor.ratios=[4]"])).eval()
    for T in (1, 3):
        with torch.no_grad():
            loss = model(fake_batch(B=2, T=T))
        assert torch.isfinite(loss)
