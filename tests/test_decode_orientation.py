"""Rotated videos come out the way a player shows them, on every backend: the display matrix's
rotation is applied (decord does it itself, PyAV's frames are turned by vlc), checked through a
red block drawn in the top-left corner of the stored frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlc.data.timeline import read_timeline
from vlc.data.video import open_video, read_video
from vlc.data.video_writer import numbered_frames, read_number, write_video

BACKENDS = ["decord", "av"]

# Stored frames are 32 high, 64 wide, with a red 4×4 block at the top-left. Where a player shows
# that block after turning the frame counter-clockwise by the display rotation:
RED_AT = {  # rotation → (displayed (H, W), the displayed corner holding the red block)
    0: ((32, 64), "top_left"),
    90: ((64, 32), "bottom_left"),
    180: ((32, 64), "bottom_right"),
    270: ((64, 32), "top_right"),
}


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("rotated")
    frames = numbered_frames(6, height=32, width=64)  # red block: rows 0-3, columns 0-3
    return {r: write_video(root / f"rot{r}.mp4", frames, rotation=r) for r in RED_AT}


def _red_corner(frame: np.ndarray) -> str:
    h, w = frame.shape[:2]
    corners = {"top_left": frame[:2, :2], "top_right": frame[:2, w - 2 :], "bottom_left": frame[h - 2 :, :2],
               "bottom_right": frame[h - 2 :, w - 2 :]}
    red = [name for name, patch in corners.items() if (patch[..., 0] > 180).all() and (patch[..., 1] < 80).all()]
    assert len(red) == 1, f"red in corners {red}"
    return red[0]


@pytest.mark.parametrize("rotation", list(RED_AT))
@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_are_upright_as_a_player_shows_them(rotated, backend, rotation):
    hw, corner = RED_AT[rotation]
    timeline = read_timeline(str(rotated[rotation]))
    assert timeline.rotation == rotation and timeline.coded_hw == (32, 64) and timeline.display_hw == hw
    clip = read_video(rotated[rotation], num_frames=3, backend=backend, aspect="squash")
    assert clip.frames.shape == (3, *hw, 3)
    assert _red_corner(clip.frames[0].numpy()) == corner
    assert open_video(rotated[rotation], num_frames=3, backend=backend, aspect="squash").shape == (3, 3, *hw)


def test_both_backends_give_identical_orientation_and_near_identical_pixels(rotated):
    for rotation in RED_AT:
        a = read_video(rotated[rotation], num_frames=6, backend="decord", aspect="squash").frames
        b = read_video(rotated[rotation], num_frames=6, backend="av", aspect="squash").frames
        assert a.shape == b.shape and (a.int() - b.int()).abs().max() <= 2, rotation
        # turned back, every frame still reads its own number
        upright = torch.rot90(b, k=-(rotation // 90), dims=(1, 2)).numpy()
        assert [read_number(f) for f in upright] == list(range(6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_comes_before_the_resize_and_the_aspect(rotated, backend):
    """A 90° file is 64 high, 32 wide as shown: padding it to 16×16 puts the bars left and right."""
    clip = read_video(rotated[90], num_frames=1, backend=backend, size=(16, 16), aspect="pad")
    frame = clip.frames[0].numpy()  # content 16 high × 8 wide in columns 4..11
    assert (frame[:, :4] == (122, 116, 104)).all() and (frame[:, 12:] == (122, 116, 104)).all()
    red = frame[..., 0].astype(int) - frame[..., 1]  # the red corner, one pixel after a 4× downscale
    assert np.unravel_index(red.argmax(), red.shape) == (15, 4) and red[15, 4] > 100
