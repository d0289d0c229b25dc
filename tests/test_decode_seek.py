"""PyAV seeks only across groups of pictures, and gives the frames a forward decode gives; every
backend reads the odd files real datasets hold (VP9 webm, MJPEG avi, one frame, GIF, a long clip)
with the same frames and timestamps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlc.data.decoders import PyAVReader
from vlc.data.timeline import read_timeline
from vlc.data.video import open_video, read_video
from vlc.data.video_writer import numbered_frames, read_number, write_video


@pytest.fixture(scope="module")
def gop8(tmp_path_factory):
    """96 numbered frames, a keyframe every 8 (12 groups of pictures), B-frames between."""
    return write_video(tmp_path_factory.mktemp("seek") / "gop8.mp4", numbered_frames(96), fps=24.0, gop=8,
                       options={"bf": "2", "sc_threshold": "0"})


def _read(path, indices):
    timeline = read_timeline(str(path))
    reader = PyAVReader(str(path), timeline, wanted=np.asarray(indices))
    frames = np.concatenate(list(reader.frames(np.asarray(indices), chunk=4)))
    reader.close()
    return frames, reader.seeks


def test_keyframes_are_known_from_the_packets(gop8):
    timeline = read_timeline(str(gop8))
    assert np.flatnonzero(timeline.keyframe).tolist() == list(range(0, 96, 8))
    assert timeline.keyframe_before(0) == 0 and timeline.keyframe_before(15) == 8 and timeline.keyframe_before(16) == 16


def test_seeks_only_where_frames_are_a_group_of_pictures_apart(gop8):
    sparse = [3, 30, 61, 90]  # in groups 0, 3, 7 and 11: three seeks, most of the file never decoded
    frames, seeks = _read(gop8, sparse)
    assert [read_number(f) for f in frames] == sparse and seeks == 3
    dense = list(range(0, 96, 3))  # three frames per group of 8: decoding on is cheaper than seeking
    frames, seeks = _read(gop8, dense)
    assert [read_number(f) for f in frames] == dense and seeks == 0
    frames, seeks = _read(gop8, [9, 40])  # one frame each in groups 1 and 5
    assert [read_number(f) for f in frames] == [9, 40] and seeks == 2


def test_seeking_gives_the_frames_a_forward_decode_gives(gop8):
    sparse, _ = _read(gop8, [5, 37, 77, 94])
    every, seeks = _read(gop8, list(range(96)))
    assert seeks == 0 and np.array_equal(sparse, every[[5, 37, 77, 94]])  # bit-identical


def test_consecutive_ranges_give_every_frame(tmp_path):
    """Unreferenced frames are left undecoded only when the clip never asks for them. The decoder
    reads packets ahead of the frame it returns (x264's default B-pyramid), so a frame of the next
    range must be known as wanted from the start: when only the current range was, frames 6, 15,
    18 and 30 came out as their successors."""
    path = write_video(tmp_path / "default.mp4", numbered_frames(40), fps=4.0)  # the encoder's defaults
    clip = open_video(path, num_frames=40, backend="av")
    parts = [clip.decode(t0, t0 + 3) for t0 in range(0, len(clip), 3)]
    assert [read_number(f) for f in torch.cat(parts).permute(0, 2, 3, 1).numpy()] == list(range(40))


def test_lazy_decoding_going_back_restarts_from_a_keyframe(gop8):
    clip = open_video(gop8, num_frames=12, backend="av")
    late, early = clip.decode(8, 12), clip.decode(0, 4)  # the second range lies behind the decoder
    eager = read_video(gop8, num_frames=12, backend="av").frames.permute(0, 3, 1, 2)
    assert torch.equal(late, eager[8:]) and torch.equal(early, eager[:4])
    assert [read_number(f) for f in early.permute(0, 2, 3, 1).numpy()] == [4, 12, 20, 28]


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    frames = numbered_frames(40)
    files = {
        "webm_vp9": write_video(root / "v.webm", frames, fps=10.0, codec="libvpx-vp9"),
        "avi_mjpeg": write_video(root / "v.avi", frames, fps=10.0, codec="mjpeg", options={"q:v": "2"}),
        "one_frame": write_video(root / "one.mp4", frames[:1], fps=10.0),
        "rotated_vfr": write_video(root / "rv.mp4", frames, rotation=90,
                                   times=[0.05 * i if i < 20 else 1.0 + 0.2 * (i - 20) for i in range(40)]),
    }
    gif = root / "v.gif"
    images = [Image.fromarray(f) for f in frames[:10]]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=100, loop=0)
    files["gif"] = gif
    return files


@pytest.mark.parametrize("kind", ["webm_vp9", "avi_mjpeg", "one_frame", "rotated_vfr", "gif"])
def test_odd_files_same_frames_and_times_on_every_backend(odd_files, kind):
    path = odd_files[kind]
    clips = {b: read_video(path, num_frames=8, backend=b, aspect="squash") for b in ("decord", "av")}
    a, b = clips["decord"], clips["av"]
    assert torch.equal(a.times, b.times) and a.frames.shape == b.frames.shape
    assert (a.frames.int() - b.frames.int()).abs().float().mean() < 1.0
    upright = torch.rot90(b.frames, k=-1, dims=(1, 2)) if kind == "rotated_vfr" else b.frames
    numbers = [read_number(f) for f in upright.numpy()]
    expected = {
        "webm_vp9": ([2, 7, 12, 17, 22, 27, 32, 37], [0.2, 0.7, 1.2, 1.7, 2.2, 2.7, 3.2, 3.7]),
        "avi_mjpeg": ([2, 7, 12, 17, 22, 27, 32, 37], [0.2, 0.7, 1.2, 1.7, 2.2, 2.7, 3.2, 3.7]),
        "one_frame": ([0] * 8, [0.0] * 8),
        # 20 frames in the first second, 20 in the next four: the 0.625 s segments' midpoints
        "rotated_vfr": ([6, 18, 22, 25, 28, 31, 34, 37], [0.3, 0.9, 1.4, 2.0, 2.6, 3.2, 3.8, 4.4]),
        "gif": ([0, 1, 3, 4, 5, 6, 8, 9], [0.0, 0.1, 0.3, 0.4, 0.5, 0.6, 0.8, 0.9]),  # decord cannot: PyAV reads it
    }[kind]
    assert numbers == expected[0]
    np.testing.assert_allclose(b.times, expected[1], atol=1e-6)
