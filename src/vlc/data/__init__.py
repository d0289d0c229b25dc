"""Video decoding, frame sampling, annotation readers and the synthetic benchmark.

The LightningDataModule lives in ``vlc.data.datamodule`` (imported on its own, so reading a video
does not pull in Lightning).
"""

from vlc.data.annotations import AnnotationError, Sample, read_llava_json, read_mc_json
from vlc.data.sampling import fps_indices, frame_times, indices_in_window, sample_indices, uniform_indices
from vlc.data.synthetic import (
    COLORS,
    PALETTE,
    TASKS,
    ensure_needle_grid,
    ensure_synthetic,
    make_needle_frames,
    make_video_frames,
    synthetic_dir,
    write_mp4,
)
from vlc.data.video import VideoClip, VideoReadError, read_video, video_info

__all__ = [
    "AnnotationError",
    "COLORS",
    "PALETTE",
    "Sample",
    "TASKS",
    "VideoClip",
    "VideoReadError",
    "ensure_needle_grid",
    "ensure_synthetic",
    "fps_indices",
    "frame_times",
    "indices_in_window",
    "make_needle_frames",
    "make_video_frames",
    "read_llava_json",
    "read_mc_json",
    "read_video",
    "sample_indices",
    "synthetic_dir",
    "uniform_indices",
    "video_info",
]
