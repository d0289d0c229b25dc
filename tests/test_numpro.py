"""NumPro: red frame numbers at the bottom-right, nothing else touched; the dataset transform."""

from __future__ import annotations

import pytest
import torch

from vlc.data.numpro import NUMPRO_PROMPT, NumProTransform, draw_frame_numbers

H = W = 96  # font: round(40 / 336 × 96) = 11 px


def grey(T: int) -> torch.Tensor:
    return torch.full((T, H, W, 3), 90, dtype=torch.uint8)


def test_numbers_are_red_at_the_bottom_right_and_nothing_else_changes():
    frames = grey(3)
    out = draw_frame_numbers(frames, [0, 7, 123])
    assert torch.equal(frames, grey(3))  # input untouched
    changed = (out != frames).any(-1)  # (T, H, W)
    for t, text in enumerate(["0", "7", "123"]):
        rows, cols = changed[t].nonzero(as_tuple=True)
        assert len(rows) > 0
        # Inside the bottom-right box: text height ≈ 11 px lifted by a third, width ≈ 7 px/digit.
        assert rows.min() >= H - 20 and cols.min() >= W - 9 * len(text)
        pix = out[t][changed[t]].int()  # (n, 3): red blended over grey: R up, G = B down
        assert (pix[:, 0] >= 90).all() and (pix[:, 1] == pix[:, 2]).all() and (pix[:, 1] < 90).all()
        assert (pix == torch.tensor([255, 0, 0])).all(-1).any()  # solid glyph pixels are pure red
    assert changed[2].sum() > changed[1].sum()  # three digits cover more than one


def test_channels_first_and_other_corners():
    frames = grey(2)
    last = draw_frame_numbers(frames, [4, 5])
    first = draw_frame_numbers(frames.permute(0, 3, 1, 2), [4, 5])
    assert first.shape == (2, 3, H, W) and torch.equal(first.permute(0, 2, 3, 1), last)

    top_left = (draw_frame_numbers(frames, [4, 5], position="top_left") != frames).any(-1)
    rows, cols = top_left[0].nonzero(as_tuple=True)
    assert rows.max() < 20 and cols.max() < 12
    with pytest.raises(ValueError, match="position"):
        draw_frame_numbers(frames, [4, 5], position="middle")
    with pytest.raises(ValueError, match="2 numbers for 1 frames"):
        draw_frame_numbers(frames[:1], [4, 5])


def test_transform_numbers_sampled_frames_like_numpro():
    frames, times, indices = grey(3), torch.tensor([0.0, 2.0, 4.0]), torch.tensor([0, 60, 120])
    transform = NumProTransform()
    assert torch.equal(transform(frames, times, indices), draw_frame_numbers(frames, [0, 1, 2]))
    by_index = NumProTransform(number_by="index")(frames, times, indices)
    assert torch.equal(by_index, draw_frame_numbers(frames, [0, 60, 120]))
    green = NumProTransform(color=(0, 255, 0))(frames, times, indices)
    assert (green[0][(green[0] != frames[0]).any(-1)][:, 0] < 90).all()
    assert torch.equal(transform(frames.permute(0, 3, 1, 2)), draw_frame_numbers(frames, [0, 1, 2]).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="needs the frames' times"):
        NumProTransform(number_by="second")(frames)
    assert transform.prompt == NUMPRO_PROMPT == "The red numbers on each frame represent the frame number."
