"""What decoding a video gives: a `VideoClip` of sampled frames with their times, or a
`VideoDecodeError` naming the file and the reason (`video.load_video` returns and raises them).

Shapes: T frames, H/W pixels.
"""

from __future__ import annotations

import os
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

import torch

__all__ = ["Backend", "ClipOrigin", "Sampling", "VideoClip", "VideoDecodeError"]

Sampling = Literal["exact", "keyframe"]
Backend = Literal["exact", "decord"]


class VideoDecodeError(Exception):
    """A video that cannot be decoded: missing, not a video, corrupt, or the decoder hung/crashed.

    Attributes:
        path: the file that was asked for.
        reason: what went wrong, in words.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")

    def __reduce__(self):  # keeps (path, reason) through pickling, e.g. out of DataLoader workers
        return type(self), (self.path, self.reason)


@dataclass
class ClipOrigin:
    """Where the T frames of a clip come from: which video, which frames, what it holds.

    Shared by `VideoClip` (the frames) and `video.VideoTokens` (their tokens), so that tokens keep
    the facts of the clip they were computed from. The fields are keyword-only.
    """

    _: KW_ONLY
    indices: list[int]
    """Frame index in the video of each of the T frames (non-decreasing)."""
    timestamps: list[float]
    """Seconds at which each frame is shown, `index / native_fps` (what LLaVA-NeXT-Video computes and
    puts in its prompts)."""
    native_fps: float
    """The video's average frame rate."""
    num_total_frames: int
    """Frames in the video that decode (may be fewer than the container lists)."""
    duration: float
    """`num_total_frames / native_fps`, seconds."""
    path: str | None
    """The video file, None for a clip not read from a file."""
    backend: Backend = "exact"
    """The decoder that produced the frames, "exact" or "decord" (see `video.load_video`)."""
    declared_frames: int | None = None
    """The frame count the container's header declares (from its duration when it gives none);
    None when it declares neither."""
    partial: bool = False
    """True when more frames are missing than `missing_frames_allowed` tolerates and
    `allow_partial=True` let the clip through: the frames come from the part that decodes."""
    frame_scale: str = "full"
    """How large the frames left the decoder: "full" (the source's resolution) or e.g. "short:672"
    (short side brought to 672 pixels by the area filter; `video.frame_scale.scale_label`)."""


@dataclass
class VideoClip(ClipOrigin):
    """Frames sampled from one video, with where and when they come from (`ClipOrigin`'s fields).

    Attributes:
        frames: uint8[T, H, W, 3], RGB.
        indices: frame index in the video of each of the T frames (non-decreasing).
        timestamps: seconds at which each frame is shown, `index / native_fps` (what LLaVA-NeXT-Video
            computes and puts in its prompts).
        presentation_times: seconds at which each frame is shown according to the container's own
            timestamps, counted from the first frame. Equal to `timestamps` for a constant frame
            rate; the true times for variable-rate video (phones). `timestamps` when the container
            has none, and with the decord backend.
        native_fps: the video's average frame rate.
        num_total_frames: frames in the video that decode (may be fewer than the container lists).
        duration: `num_total_frames / native_fps`, seconds.
        path: the file the frames come from, None when not read from a file.
        snapped: True when the indices were moved to keyframes (`sampling="keyframe"`).
        timestamp_shift: per frame, seconds between the frame returned and the one asked for
            (returned minus asked; all zeros unless snapped).
        backend: the decoder that produced the frames, "exact" or "decord" (see `load_video`).
        declared_frames: the frame count the container's header declares (from its duration
            when it gives none); None when it declares neither.
        partial: True when more frames are missing than `missing_frames_allowed` tolerates and
            `allow_partial=True` let the clip through: the frames come from the part that decodes.
        frame_scale: "full", or the scale the decoder shrank the frames to (e.g. "short:672").
    """

    frames: torch.Tensor
    snapped: bool = False
    timestamp_shift: list[float] = field(default_factory=list)
    presentation_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.timestamp_shift:
            self.timestamp_shift = [0.0] * len(self.indices)
        if not self.presentation_times:
            self.presentation_times = list(self.timestamps)
