"""Video: frame sampling (pure), decoding (frame-exact FFmpeg, or decord on request, in a worker
process), spatial pooling, per-frame token extraction."""

from video.budget import VideoBudget, VideoLayout, choose_video_budget
from video.decode import VideoClip, VideoDecodeError, load_video
from video.extract import VideoTokens, extract_video_tokens, load_video_tokens, save_video_tokens
from video.pooling import num_video_tokens, spatial_pool
from video.sampling import fps_indices, uniform_indices

__all__: list[str] = [
    "uniform_indices",
    "fps_indices",
    "choose_video_budget",
    "VideoBudget",
    "VideoLayout",
    "load_video",
    "VideoClip",
    "VideoDecodeError",
    "spatial_pool",
    "num_video_tokens",
    "VideoTokens",
    "extract_video_tokens",
    "save_video_tokens",
    "load_video_tokens",
]
