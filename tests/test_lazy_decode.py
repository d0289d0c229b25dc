"""Lazy decoding (``data.lazy_decode``, ``vlc-bench --decode lazy``): a clip's frames decoded a range
at a time give exactly the eagerly decoded frames, batch and pad like ``collate_video_qa``, survive
pickling, fail early naming a bad file, and streaming ``vst`` decodes one window at a time while
building the same context as from decoded pixels."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from vlc.data.annotations import Sample
from vlc.data.datamodule import VideoQADataset, collate_video_qa
from vlc.data.synthetic import make_needle_frames, sample_rng, write_mp4
from vlc.data.video import LazyClip, LazyFrames, VideoReadError, materialize, open_video, read_video
from vlc.run import build_model
from vlc.tokens import iter_cache_layers

QUESTION = "What color is the shape that appears briefly in the video?"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    frames, _ = make_needle_frames(40, 0.5, "blue", 32, sample_rng(0, "lazy", 0), shape="square")
    path = tmp_path_factory.mktemp("lazy") / "needle40.mp4"
    write_mp4(path, frames, fps=4.0)
    return path


def _sample(path: Path, name: str = "a") -> Sample:
    return Sample(id=name, video=str(path), question=QUESTION, answer="blue", candidates=["red", "blue", "green"])


@pytest.mark.parametrize("backend", ["decord", "av"])
@pytest.mark.parametrize("sampling", [dict(num_frames=40), dict(num_frames=13), dict(fps=2.0, max_frames=7),
                                      dict(fps=4.0, start=1.0, end=6.0)])
def test_ranges_in_order_give_read_videos_frames(video, backend, sampling):
    eager = read_video(video, backend=backend, **sampling)
    clip = open_video(video, backend=backend, **sampling)
    assert len(clip) == len(eager.times) and torch.equal(clip.times, eager.times)
    assert clip.shape == (len(eager.times), 3, 32, 32)
    parts = [clip.decode(t0, t0 + 3) for t0 in range(0, len(clip), 3)]
    assert [p.shape[0] for p in parts[:-1]] == [3] * (len(parts) - 1)  # the last range is clamped
    assert torch.equal(torch.cat(parts), eager.frames.permute(0, 3, 1, 2))
    assert clip.decode_seconds > 0


def test_going_back_and_resizing(video):
    eager = read_video(video, num_frames=10, backend="av", size=(16, 24)).frames.permute(0, 3, 1, 2)
    clip = open_video(video, num_frames=10, backend="av", size=(16, 24))
    assert clip.shape == (10, 3, 16, 24)
    assert torch.equal(clip.decode(6, 10), eager[6:])
    assert torch.equal(clip.decode(0, 4), eager[:4])  # behind the decoder: PyAV starts over
    assert clip.decode(10, 12).shape == (0, 3, 16, 24)


def test_only_the_asked_range_is_decoded(video, monkeypatch):
    clip = open_video(video, num_frames=20, backend="decord")
    asked = []
    real = clip._chunks
    monkeypatch.setattr(clip, "_chunks", lambda unique: asked.append(unique.tolist()) or real(unique))
    clip.decode(5, 10)
    assert asked == [clip.indices[5:10].tolist()]


def test_pickled_clip_reopens_and_decodes_the_same(video):
    for backend in ("decord", "av"):
        clip = open_video(video, num_frames=8, backend=backend)
        first = clip.decode(0, 4)
        copy = pickle.loads(pickle.dumps(clip))
        assert copy._reader is None  # the open reader is not pickled
        assert torch.equal(copy.decode(0, 4), first) and torch.equal(copy.decode(4, 8), clip.decode(4, 8))


def test_a_bad_file_fails_when_opened_naming_it(tmp_path, video):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(VideoReadError, match="missing file") as info:
        open_video(missing, num_frames=4)
    assert str(missing) in str(info.value)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video.read_bytes()[:200])
    with pytest.raises(VideoReadError) as info:
        open_video(truncated, num_frames=4)
    assert str(truncated) in str(info.value)
    with pytest.raises(ValueError, match="exactly one of num_frames or fps"):
        open_video(video)


def test_collate_pads_like_the_eager_batch(video):
    samples = [_sample(video, "long"), _sample(video, "short")]
    eager_sets = [VideoQADataset(samples[:1], num_frames=12), VideoQADataset(samples[1:], num_frames=5)]
    lazy_sets = [VideoQADataset(samples[:1], num_frames=12, lazy=True),
                 VideoQADataset(samples[1:], num_frames=5, lazy=True)]
    eager = collate_video_qa([d[0] for d in eager_sets])
    lazy = collate_video_qa([d[0] for d in lazy_sets])
    assert isinstance(lazy["pixels"], LazyFrames) and isinstance(lazy_sets[0][0]["frames"], LazyClip)
    assert lazy["pixels"].shape == eager["pixels"].shape == (2, 12, 3, 32, 32)
    for key in ("frame_mask", "times"):
        assert torch.equal(lazy[key], eager[key])
    assert torch.equal(lazy["pixels"][:, 3:9], eager["pixels"][:, 3:9])  # the short clip is zero past frame 5
    assert torch.equal(materialize(lazy["pixels"]), eager["pixels"])
    with pytest.raises(IndexError, match=r"\[:, t0:t1\] only"):
        lazy["pixels"][0]
    with pytest.raises(IndexError, match=r"\[:, t0:t1\] only"):
        lazy["pixels"][:, 0:4, 0]  # a third index is refused, not dropped
    with pytest.raises(ValueError, match="mixes lazily decoded clips with decoded frames"):
        collate_video_qa([eager_sets[0][0], lazy_sets[1][0]])


def test_frame_transform_applies_to_each_decoded_range(video):
    def invert(frames):
        return 255 - frames

    eager = VideoQADataset([_sample(video)], num_frames=9, frame_transform=invert)[0]["frames"]
    clip = VideoQADataset([_sample(video)], num_frames=9, frame_transform=invert, lazy=True)[0]["frames"]
    assert torch.equal(torch.cat([clip.decode(0, 4), clip.decode(4, 9)]), eager)


def test_datamodule_decodes_lazily_for_evaluation_only(cfg_factory):
    import hydra

    cfg = cfg_factory(["data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.lazy_decode=true"])
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    assert not dm.datasets["train"].lazy and dm.datasets["val"].lazy
    assert isinstance(next(iter(dm.val_dataloader()))["pixels"], LazyFrames)
    assert isinstance(next(iter(dm.train_dataloader()))["pixels"], torch.Tensor)


@pytest.mark.parametrize("compressor", ["none", "vst"])
def test_context_from_lazy_frames_equals_decoded(cfg_factory, video, compressor, monkeypatch):
    torch.manual_seed(0)
    # 24 frames x 16 tokens; window 160 tokens = 10 frames, so streaming vst asks for 10, 10, 4.
    overrides = ["~data", f"compressor={compressor}"] + (["compressor.window=160"] if compressor == "vst" else [])
    model = build_model(cfg_factory(overrides)).eval()
    eager = collate_video_qa([VideoQADataset([_sample(video)], num_frames=24)[0]])
    lazy = collate_video_qa([VideoQADataset([_sample(video)], num_frames=24, lazy=True)[0]])
    asked = []
    clip = lazy["pixels"].clips[0]
    real = clip.decode
    monkeypatch.setattr(clip, "decode", lambda t0, t1: asked.append((t0, t1)) or real(t0, t1))
    with torch.no_grad():
        a = model.pipeline.encode_context(eager)
        b = model.pipeline.encode_context(lazy)
    assert asked == ([(0, 10), (10, 20), (20, 24)] if compressor == "vst" else [(0, 24)])
    assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.visual_tokens, b.visual_tokens)
    layers = list(zip(iter_cache_layers(a.cache), iter_cache_layers(b.cache)))
    assert len(layers) == 2  # model=tiny's two decoder layers
    for (ka, va), (kb, vb) in layers:
        assert torch.equal(ka, kb) and torch.equal(va, vb)
    scores_a = model.pipeline.score_candidates(a, eager["questions"], eager["candidates"])
    scores_b = model.pipeline.score_candidates(b, lazy["questions"], lazy["candidates"])
    assert torch.equal(scores_a, scores_b)


def test_bench_decodes_lazily_by_default(tmp_path):
    from vlc.evaluation.bench import main

    common = ["compressor=vst", "compressor.window=32", "--frames", "8", "--no-warmup", "--cache", str(tmp_path / "v")]
    lazy = main(common + ["--out", str(tmp_path / "lazy")])
    eager = main(common + ["--decode", "eager", "--out", str(tmp_path / "eager")])
    for rows in (lazy, eager):
        assert rows[0]["status"] == "ok" and rows[0]["decode_ms"] > 0
    # 8 frames x 16 tokens, one beacon per 16 raw tokens after the 4-token prefix, either way
    assert (lazy[0]["visual_tokens"], lazy[0]["kv_tokens"]) == (eager[0]["visual_tokens"], eager[0]["kv_tokens"]) == (128, 12)
    assert "decoded lazily from mp4" in (tmp_path / "lazy" / "bench.md").read_text()
    assert "decoded from mp4" in (tmp_path / "eager" / "bench.md").read_text()


def test_training_run_validates_from_lazy_frames_like_from_decoded(cfg_factory, tmp_path):
    from vlc.run import train

    from conftest import TINY_DATA

    short = ["experiment=vst_ratio16", *TINY_DATA, "trainer.max_steps=2", "trainer.val_check_interval=2",
             "callbacks.progress_bar.refresh_rate=0", "compressor.window=32"]
    eager = train(cfg_factory(short))
    lazy = train(cfg_factory(short + ["data.lazy_decode=true", f"paths.output_dir={tmp_path / 'lazy'}"]))
    assert eager["val/acc"] == lazy["val/acc"] and eager["val/kv_tokens"] == lazy["val/kv_tokens"]
    assert eager["train/loss"] == lazy["train/loss"]  # training decodes eagerly either way
