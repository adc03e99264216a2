"""The settings of an extraction run (`ExtractSettings`), and what follows from them and the tower:
what changes the tokens, the model's video layout, and `video.load_video`'s arguments.

`vlm-vision extract` builds `ExtractSettings` from its flags, whose defaults are the fields' defaults
here (written once). Frames leave the decoder process resized by the tower's image transform's rule
(`video.frame_scale`), unless `full_resolution_frames`; which of the two is a token setting.
"""

from __future__ import annotations

import dataclasses
import numbers
import typing
from dataclasses import dataclass
from typing import Any

import torch

from video.budget import VideoLayout, sampled_frame_count
from video.clip import Backend, Sampling
from video.frame_scale import FrameScale, scale_label
from video.pooling import NEWLINE_LAYOUTS, POOL_MODES
from video.provenance import weights_fingerprint
from video.tower_pooling import DTYPES

__all__ = ["ExtractSettings", "decoder_scale", "load_arguments", "token_settings", "video_layout"]


@dataclass(frozen=True)
class ExtractSettings:
    """How a run samples, decodes, encodes and pools each video, and what it writes beside the tokens.

    Raises:
        ValueError: naming the field, for a count that is not positive (`workers`: negative), a rate
            that is not positive, or a name outside the field's `choices`.
    """

    num_frames: int = 32
    """Frames sampled uniformly per video (with `fps`: the most frames kept, unless `max_frames`)."""
    fps: float | None = None
    """Sample about this many frames per second (None: `num_frames` uniform frames)."""
    sampling: str = dataclasses.field(default="exact", metadata={"choices": typing.get_args(Sampling)})
    """Exact frames, or each target moved to the nearest keyframe."""
    backend: str = dataclasses.field(default="exact", metadata={"choices": typing.get_args(Backend)})
    """The decoder: exact frames (PyAV), or decord's get_batch as LLaVA-NeXT-Video's loader."""
    min_frames: int = 1
    """With `fps`, the fewest frames per video."""
    max_frames: int | None = None
    """With `fps`, the most frames per video (None: `num_frames`)."""
    pool_stride: int = 2
    """The finest pooling stride (2 turns 24x24 patches into 144 tokens)."""
    pool_mode: str = dataclasses.field(default="average", metadata={"choices": POOL_MODES})
    """How patches are pooled."""
    max_video_tokens: int | None = None
    """The model's token budget of one video (None: every video at `pool_stride`)."""
    video_newline: str = dataclasses.field(default="no_token", metadata={"choices": tuple(NEWLINE_LAYOUTS)})
    """The model's newline layout (counts tokens for `max_video_tokens` only)."""
    faster_token_stride: int | None = None
    """The model's SlowFast stride (counts tokens for `max_video_tokens` only)."""
    dtype: str = dataclasses.field(default="float32", metadata={"choices": tuple(sorted(DTYPES))})
    """The tower's dtype, by its torch name."""
    batch_size: int | None = None
    """Frames per tower call (None: all frames of a video at once)."""
    workers: int = 2
    """Background decoding processes (0: decode in the main process)."""
    overwrite: bool = False
    """Redo every video whose output exists, also one that holds another video's tokens."""
    allow_partial: bool = False
    """Accept videos that decode fewer frames than their container declares (marked partial)."""
    full_resolution_frames: bool = False
    """Frames leave the decoder at the video's own resolution and are resized afterwards."""
    preview: bool = False
    """Also write a contact sheet of the sampled frames beside each token file."""
    random_weights: bool = False
    """The tower has random weights (the tokens carry no meaning and are labelled so)."""

    def __post_init__(self) -> None:
        for name in ("num_frames", "min_frames", "pool_stride", "max_frames", "max_video_tokens",
                     "faster_token_stride", "batch_size", "workers"):
            value, least = getattr(self, name), 0 if name == "workers" else 1
            is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if value is not None and (not is_int or value < least):
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if self.fps is not None and (not isinstance(self.fps, numbers.Real) or not self.fps > 0):
            raise ValueError(f"fps must be a positive number of frames per second or None, got {self.fps!r}")
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            if choices is not None and getattr(self, field.name) not in choices:
                raise ValueError(f"{field.name} must be one of {choices}, got {getattr(self, field.name)!r}")


# Settings recorded only when they differ from the value that outputs written before the setting existed
# were made with (not a default: a fact of those files), so that such outputs still match.
_RECORDED_WHEN_NOT = {"min_frames": 1, "max_frames": None, "max_video_tokens": None, "faster_token_stride": None}


def decoder_scale(config: ExtractSettings, tower: torch.nn.Module) -> FrameScale | None:
    """The decoder's resize for `tower`'s image transform; None (full resolution) with `full_resolution_frames`."""
    if config.full_resolution_frames:
        return None
    return tower.image_transform.frame_scale()


def token_settings(config: ExtractSettings, tower: torch.nn.Module, model_label: str) -> dict[str, Any]:
    """Every setting that changes the tokens; an output is kept only when all of them match."""
    settings = {"model": model_label, "weights_fingerprint": weights_fingerprint(tower),
                "random_weights": config.random_weights, "dtype": config.dtype, "layer": int(tower.select_layer),
                "pool_stride": config.pool_stride, "pool_mode": config.pool_mode, "sampling": config.sampling,
                "num_frames": config.num_frames, "fps": config.fps, "backend": config.backend, "start": None,
                "end": None, "allow_partial": config.allow_partial,
                "frame_scale": scale_label(decoder_scale(config, tower))}
    for name, before in _RECORDED_WHEN_NOT.items():
        if getattr(config, name) != before:
            settings[name] = getattr(config, name)
    if config.max_video_tokens is not None:
        settings["video_newline"] = config.video_newline
        settings["base_pool_stride"] = settings.pop("pool_stride")  # each file records the stride it got
    return settings


def video_layout(config: ExtractSettings, tower: torch.nn.Module) -> VideoLayout:
    """The model's video-token settings `config` describes (pooling, newlines, SlowFast, budget)."""
    return VideoLayout(grid=tuple(tower.grid_size), pool_stride=config.pool_stride, pool_mode=config.pool_mode,
                       newline=config.video_newline, faster_token_stride=config.faster_token_stride,
                       max_video_tokens=config.max_video_tokens)


def load_arguments(config: ExtractSettings, layout: VideoLayout, scale: FrameScale | None = None) -> dict[str, Any]:
    """`video.load_video`'s arguments: fixed count, or fps with min/max frames within the token budget;
    frames resized by the decoder to `scale` (`decoder_scale`; None: full resolution)."""
    kwargs = {"sampling": config.sampling, "backend": config.backend, "allow_partial": config.allow_partial,
              "frame_scale": scale}
    if config.fps:
        most = layout.frame_limit(config.max_frames or config.num_frames, config.min_frames)
        return {**kwargs, "fps": config.fps, "min_frames": config.min_frames, "max_frames": most}
    count = sampled_frame_count(1, 1.0, None, num_frames=config.num_frames, min_frames=config.min_frames,
                                max_frames=layout.frame_limit(None, config.min_frames))
    return {**kwargs, "num_frames": count}
