"""The settings of an extraction run, from its options: what changes the tokens, the model's video
layout, and `video.load_video`'s arguments.

`options` is any object with the attributes of `vlm-vision extract`'s parsed arguments
(`pool_stride`, `pool_mode`, `sampling`, `num_frames`, `fps`, `backend`, `allow_partial`,
`random_weights`, `dtype`, and optionally `min_frames`, `max_frames`, `max_video_tokens`,
`video_newline`, `faster_token_stride`, `full_resolution_frames`).

Frames leave the decoder process resized by the tower's image transform's rule
(`video.frame_scale`), unless `full_resolution_frames`; which of the two is a token setting.
"""

from __future__ import annotations

from typing import Any

import torch

from video.budget import VideoLayout, sampled_frame_count
from video.frame_scale import FrameScale, scale_label
from video.provenance import weights_fingerprint

__all__ = ["decoder_scale", "load_arguments", "token_settings", "video_layout"]


def decoder_scale(options: Any, tower: torch.nn.Module) -> FrameScale | None:
    """The decoder's resize for `tower`'s image transform; None (full resolution) with `full_resolution_frames`."""
    if getattr(options, "full_resolution_frames", False):
        return None
    return tower.image_transform.frame_scale()


def token_settings(options: Any, tower: torch.nn.Module, model_label: str) -> dict[str, Any]:
    """Every setting that changes the tokens; an output is kept only when all of them match."""
    settings = {"model": model_label, "weights_fingerprint": weights_fingerprint(tower),
                "random_weights": options.random_weights, "dtype": options.dtype, "layer": int(tower.select_layer),
                "pool_stride": options.pool_stride, "pool_mode": options.pool_mode, "sampling": options.sampling,
                "num_frames": options.num_frames, "fps": options.fps, "backend": options.backend, "start": None,
                "end": None, "allow_partial": options.allow_partial,
                "frame_scale": scale_label(decoder_scale(options, tower))}
    # recorded only when set, so outputs of earlier runs without them still match
    for name, default in (("min_frames", 1), ("max_frames", None), ("max_video_tokens", None),
                          ("faster_token_stride", None)):
        if getattr(options, name, default) != default:
            settings[name] = getattr(options, name)
    if getattr(options, "max_video_tokens", None) is not None:
        settings["video_newline"] = options.video_newline
        settings["base_pool_stride"] = settings.pop("pool_stride")  # each file records the stride it got
    return settings


def video_layout(options: Any, tower: torch.nn.Module) -> VideoLayout:
    """The model's video-token settings these options describe (pooling, newlines, SlowFast, budget)."""
    return VideoLayout(grid=tuple(tower.grid_size), pool_stride=options.pool_stride, pool_mode=options.pool_mode,
                       newline=getattr(options, "video_newline", "no_token"),
                       faster_token_stride=getattr(options, "faster_token_stride", None),
                       max_video_tokens=getattr(options, "max_video_tokens", None))


def load_arguments(options: Any, layout: VideoLayout, scale: FrameScale | None = None) -> dict[str, Any]:
    """`video.load_video`'s arguments: fixed count, or fps with min/max frames within the token budget;
    frames resized by the decoder to `scale` (`decoder_scale`; None: full resolution)."""
    kwargs = {"sampling": options.sampling, "backend": options.backend, "allow_partial": options.allow_partial,
              "frame_scale": scale}
    min_frames = getattr(options, "min_frames", 1)
    if options.fps:
        most = layout.frame_limit(getattr(options, "max_frames", None) or options.num_frames, min_frames)
        return {**kwargs, "fps": options.fps, "min_frames": min_frames, "max_frames": most}
    count = sampled_frame_count(1, 1.0, None, num_frames=options.num_frames, min_frames=min_frames,
                                max_frames=layout.frame_limit(None, min_frames))
    return {**kwargs, "num_frames": count}
