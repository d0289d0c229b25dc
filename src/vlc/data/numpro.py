"""NumPro (Wu et al., CVPR 2025, "Number it: Temporal Grounding Videos like Flipping Manga").

Each sampled frame gets its number drawn on it in red at the bottom-right, and the prompt says
what the numbers mean, so a video LLM can answer "when" with frame numbers it can read off the
frames. Defaults follow the public NumPro code: red, bottom-right, no margin, the text lifted by a
third of its height, font size 40 px on 336 px frames (here a fraction of the frame height, so
any resolution gets the same look), frames numbered 0, 1, 2, … in sampling order.

NumPro draws with DejaVu Sans Bold; vlc uses it where the system has it and otherwise Pillow's
built-in scalable font at the same size.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

# NumPro's instruction, put before the question.
NUMPRO_PROMPT = "The red numbers on each frame represent the frame number."

# NumPro: 40 px DejaVu Sans Bold on 336 × 336 frames.
NUMPRO_FONT_FRACTION = 40 / 336
POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")


@lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def draw_number(image: Image.Image, text: str, position: str, font_size: int, color: tuple[int, int, int]) -> None:
    """Draw ``text`` on ``image`` in place, placed as NumPro places it."""
    draw = ImageDraw.Draw(image)
    font = load_font(font_size)
    width, height = image.size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left, bottom - top
    if position == "top_left":
        x, y = 0, 0
    elif position == "top_right":
        x, y = width - text_w, 0
    elif position == "bottom_left":
        x, y = 0, height - text_h
    elif position == "bottom_right":
        x, y = width - text_w, height - text_h
    else:  # center
        x, y = (width - text_w) // 2, (height - text_h) // 2
    if position.startswith("bottom"):
        # NumPro lifts bottom text by a third of its height: the glyphs start below the anchor
        # (the font's top bearing), so without the lift their lower part would leave the frame.
        y -= text_h / 3
    draw.text((x, y), text, font=font, fill=tuple(color))


def draw_frame_numbers(
    frames: Tensor,
    numbers: Sequence[int],
    position: str = "bottom_right",
    color: Sequence[int] = (255, 0, 0),
    font_fraction: float = NUMPRO_FONT_FRACTION,
) -> Tensor:
    """uint8 frames (T, H, W, 3) or (T, 3, H, W) → the same frames with ``numbers[t]`` drawn on frame t.

    Channels-last is assumed when the last dimension is 3. The input is not modified.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(
            "draw_frame_numbers: frames must be uint8 (T, H, W, 3) or (T, 3, H, W), "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    if position not in POSITIONS:
        raise ValueError(f"NumPro position must be one of {POSITIONS}, got {position!r}")
    if len(numbers) != frames.shape[0]:
        raise ValueError(f"draw_frame_numbers: {len(numbers)} numbers for {frames.shape[0]} frames")
    channels_last = frames.shape[-1] == 3
    if not channels_last and frames.shape[1] != 3:
        raise ValueError(f"draw_frame_numbers: no RGB axis in frames of shape {tuple(frames.shape)}")
    hwc = frames if channels_last else frames.permute(0, 2, 3, 1)  # (T, H, W, 3)
    font_size = max(1, round(font_fraction * hwc.shape[1]))
    out = []
    for frame, number in zip(hwc.cpu().numpy(), numbers):
        image = Image.fromarray(frame)
        draw_number(image, str(int(number)), position, font_size, tuple(int(c) for c in color))
        out.append(np.asarray(image))
    drawn = torch.from_numpy(np.stack(out)).to(frames.device)  # (T, H, W, 3)
    return drawn if channels_last else drawn.permute(0, 3, 1, 2).contiguous()


class NumProTransform:
    """A dataset ``frame_transform(frames, times, indices) -> frames`` that numbers the frames.

    ``times`` and ``indices`` may be omitted (``transform(frames)``) when numbering by sample.

    number_by: "sample" numbers the sampled frames 0, 1, 2, … (NumPro); "index" uses the source
               video's frame indices; "second" the rounded timestamps.
    """

    def __init__(
        self,
        position: str = "bottom_right",
        color: Sequence[int] = (255, 0, 0),
        font_fraction: float = NUMPRO_FONT_FRACTION,
        number_by: str = "sample",
    ) -> None:
        if position not in POSITIONS:
            raise ValueError(f"NumPro position must be one of {POSITIONS}, got {position!r}")
        if number_by not in ("sample", "index", "second"):
            raise ValueError(f"NumPro number_by must be 'sample', 'index' or 'second', got {number_by!r}")
        self.position, self.color, self.font_fraction = position, tuple(color), font_fraction
        self.number_by = number_by
        self.prompt = NUMPRO_PROMPT

    def __call__(
        self, frames: Tensor, times: Tensor | None = None, indices: Tensor | Sequence[int] | None = None
    ) -> Tensor:
        if self.number_by == "sample":
            numbers = list(range(frames.shape[0]))
        else:
            source = indices if self.number_by == "index" else times
            if source is None:
                what = "indices" if self.number_by == "index" else "times"
                raise ValueError(f"NumProTransform(number_by={self.number_by!r}) needs the frames' {what}")
            numbers = [int(i) for i in source] if self.number_by == "index" else [round(float(t)) for t in source]
        return draw_frame_numbers(frames, numbers, self.position, self.color, self.font_fraction)
