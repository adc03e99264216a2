"""Video: frame sampling (pure), decoding (frame-exact FFmpeg, or decord on request, in a worker
process), spatial pooling, per-frame token extraction.

The names below are the public API. They are imported on first use, so that `import video` (and a
light submodule such as `video.atomic_files`, or the decoder process) does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from video.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "uniform_indices": "video.sampling",
    "fps_indices": "video.sampling",
    "choose_video_budget": "video.budget",
    "VideoBudget": "video.budget",
    "VideoLayout": "video.budget",
    "load_video": "video.decode",
    "VideoClip": "video.clip",
    "VideoDecodeError": "video.clip",
    "DecordNotInstalled": "video.decord_decoder",
    "FrameScale": "video.frame_scale",
    "spatial_pool": "video.pooling",
    "num_video_tokens": "video.pooling",
    "VideoTokens": "video.extract",
    "extract_video_tokens": "video.extract",
    "save_video_tokens": "video.extract",
    "load_video_tokens": "video.extract",
}

__all__: list[str] = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from video.budget import VideoBudget, VideoLayout, choose_video_budget  # noqa: F401
    from video.clip import VideoClip, VideoDecodeError  # noqa: F401
    from video.decode import load_video  # noqa: F401
    from video.decord_decoder import DecordNotInstalled  # noqa: F401
    from video.frame_scale import FrameScale  # noqa: F401
    from video.extract import VideoTokens, extract_video_tokens, load_video_tokens, save_video_tokens  # noqa: F401
    from video.pooling import num_video_tokens, spatial_pool  # noqa: F401
    from video.sampling import fps_indices, uniform_indices  # noqa: F401
