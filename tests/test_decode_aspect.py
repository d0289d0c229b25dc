"""``data.aspect``: a wide frame padded (whole frame on the mean colour), centre-cropped or squashed to
the encoder's square; a square frame is the same under all three (so the square synthetic videos,
and with them ``make train``'s figures, do not change with the policy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlc.data.frames import CLIP_MEAN_RGB, fit_frames, output_hw
from vlc.data.synthetic import make_needle_frames, sample_rng, write_mp4
from vlc.data.video import read_video
from vlc.data.video_writer import write_video

RED, BLUE, GREEN = (230, 20, 20), (20, 20, 230), (20, 200, 20)


def wide_frames(count: int = 2) -> np.ndarray:
    """32 high × 64 wide: red left half, blue right half, a green band down the first 4 columns."""
    frames = np.zeros((count, 32, 64, 3), dtype=np.uint8)
    frames[:, :, :32], frames[:, :, 32:], frames[:, :, :4] = RED, BLUE, GREEN
    return frames


def _is(pixel, color, tol=40) -> bool:
    return bool(np.abs(np.asarray(pixel, dtype=int) - color).max() <= tol)


def test_fit_frames_pad_crop_squash_exactly():
    frames = torch.from_numpy(wide_frames())
    pad = fit_frames(frames, (16, 16), "pad").numpy()[0]
    # scaled by 1/4 to 8 × 16, centred: rows 4..11; the rest is exactly the CLIP mean colour
    assert (pad[:4] == CLIP_MEAN_RGB).all() and (pad[12:] == CLIP_MEAN_RGB).all()
    assert _is(pad[8, 0], GREEN, 90) and _is(pad[8, 5], RED) and _is(pad[8, 12], BLUE)
    crop = fit_frames(frames, (16, 16), "crop").numpy()[0]
    # short side 32 → 16 (the frame becomes 16 × 32), centre 16 columns: the green band is cut off
    assert all(_is(crop[r, c], RED) for r in (0, 8, 15) for c in (0, 7)) and _is(crop[8, 15], BLUE)
    squash = fit_frames(frames, (16, 16), "squash").numpy()[0]
    assert _is(squash[8, 0], GREEN, 90) and _is(squash[8, 4], RED) and _is(squash[8, 12], BLUE)
    assert _is(squash[0, 4], RED)  # squash fills every row
    grey = fit_frames(frames, (16, 16), "pad", pad_color=(0, 0, 0)).numpy()[0]
    assert (grey[:4] == 0).all()


def test_output_size_without_a_target():
    assert output_hw((32, 64), None, "squash") == (32, 64)  # the video's own size, as before
    assert output_hw((32, 64), None, "pad") == (64, 64)
    assert output_hw((32, 64), None, "crop") == (32, 32)
    assert output_hw((32, 64), (24, 40), "crop") == (24, 40)
    frames = torch.from_numpy(wide_frames())
    assert fit_frames(frames, None, "pad").shape == (2, 64, 64, 3)
    assert fit_frames(frames, None, "crop").shape == (2, 32, 32, 3)
    assert torch.equal(fit_frames(frames, None, "squash"), frames)


def test_a_non_square_target_keeps_its_own_aspect():
    frames = torch.from_numpy(wide_frames())
    assert torch.equal(fit_frames(frames, (16, 32), "pad"), fit_frames(frames, (16, 32), "squash"))
    tall = fit_frames(frames, (32, 16), "pad").numpy()[0]  # a 16 × 8 content band in rows 12..19
    assert (tall[:12] == CLIP_MEAN_RGB).all() and (tall[20:] == CLIP_MEAN_RGB).all()


@pytest.mark.parametrize("backend", ["decord", "av"])
def test_a_wide_video_through_each_policy(tmp_path, backend):
    path = write_video(tmp_path / "wide.mp4", wide_frames(4))
    pad = read_video(path, num_frames=2, backend=backend, size=(16, 16), aspect="pad").frames[0].numpy()
    crop = read_video(path, num_frames=2, backend=backend, size=(16, 16), aspect="crop").frames[0].numpy()
    assert (pad[:3] == CLIP_MEAN_RGB).all() and _is(pad[8, 5], RED) and _is(pad[8, 12], BLUE)
    assert _is(crop[8, 0], RED) and _is(crop[8, 15], BLUE)


def test_square_videos_are_the_same_under_every_policy(tmp_path):
    """The synthetic benchmark's videos are square: pad and crop change nothing, at the video's size
    (frame_size null, the synthetic default) and at a resize target."""
    frames, _ = make_needle_frames(8, 0.5, "blue", 32, sample_rng(0, "aspect", 0), shape="square")
    path = tmp_path / "square.mp4"
    write_mp4(path, frames, fps=4.0)
    for size in (None, (16, 16), (48, 48)):
        clips = {a: read_video(path, num_frames=8, size=size, aspect=a).frames for a in ("pad", "crop", "squash")}
        assert torch.equal(clips["pad"], clips["squash"]) and torch.equal(clips["crop"], clips["squash"]), size


def test_unknown_aspect_is_refused_naming_the_key(tmp_path):
    path = write_video(tmp_path / "w.mp4", wide_frames(2))
    with pytest.raises(ValueError, match=r"data.aspect='letterbox': expected one of pad, crop, squash"):
        read_video(path, num_frames=1, aspect="letterbox")
