"""Per-frame video tokens: sampled frames -> frozen tower -> spatial pooling, and their files.

This is the vision half of LLaVA-NeXT-Video, stopped before the projector: each sampled frame goes
through the CLIP tower as an independent image (frames are folded into the batch), its 24x24 patch
grid is pooled 2x2 to 12x12 = 144 tokens, and the frames are unfolded again (`video.tower_pooling`). transformers'
`LlavaNextVideoForConditionalGeneration` and the first LLaVA-NeXT-Video release pool *before* the
projector, so the tokens stored here are projector-agnostic: any projector trained on that layout
can be applied later, and one extraction serves many experiments.

Frames travel to the tower's device as uint8 (a quarter of the bytes of float32) and are
preprocessed there by the tower's own `image_transform`.

A `.safetensors` file holds one tensor, `tokens`, and the clip's metadata as safetensors' string
metadata (JSON-encoded values), so any safetensors reader sees both. Files are written to a
temporary name in the same folder and renamed into place (`video.atomic_files`): a reader, or a
resumed extraction, never sees half a file.

Shapes: T frames, H/W pixels, S tower input side, N patch tokens per frame, N' pooled tokens per
frame, D tower width.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from video.atomic_files import write_atomic
from video.clip import ClipOrigin, VideoClip
from video.decode import load_video
from video.pooling import pooled_grid
from video.tower_pooling import check_tower_pooling, encode_frames

__all__ = ["TokenFileHeader", "VideoTokens", "extract_video_tokens", "load_video_tokens", "read_token_header",
           "save_video_tokens"]

FORMAT = "vlm-vision/video-tokens/v1"


@dataclasses.dataclass
class VideoTokens(ClipOrigin):
    """The pooled tokens of one clip and where they came from (`video.clip.ClipOrigin`'s fields:
    indices, timestamps, native_fps, num_total_frames, duration, path, backend, declared_frames,
    partial; keyword-only)."""

    tokens: torch.Tensor
    """float[T, N', D]: per frame, tower -> pool, before any projector."""
    grid: tuple[int, int]
    """The tower's patch grid (rows, cols) before pooling, e.g. (24, 24)."""
    pooled_grid: tuple[int, int]
    """The grid of `tokens` after pooling, e.g. (12, 12); N' = rows * cols."""
    pool_stride: int
    pool_mode: str
    model: str
    """What produced the tokens: a Hub id, a path, or 'random:<variant>'."""
    layer: int
    """The tower layer the tokens come from (a `hidden_states` index, -2 for LLaVA)."""
    random_weights: bool = False
    """True when the tower had random weights: the tokens then carry no meaning."""
    sampling: str = "exact"
    """'exact' or 'keyframe' (indices moved to the nearest keyframe)."""
    timestamp_shift: list[float] | None = None
    """With keyframe sampling, how far (s) each frame moved from the uniform target."""
    presentation_times: list[float] | None = None
    """Each frame's time (s) from the container's timestamps; differs from `timestamps` on
    variable-frame-rate video (see `VideoClip.presentation_times`)."""

    @property
    def num_frames(self) -> int:
        return int(self.tokens.shape[0])

    def metadata(self) -> dict[str, str]:
        """Everything but the tensor, as safetensors string metadata (JSON-encoded values)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tokens"}
        meta = {name: json.dumps(value) for name, value in fields.items()}
        meta["format"] = FORMAT
        return meta


def extract_video_tokens(
    video: str | os.PathLike | VideoClip,
    tower: torch.nn.Module,
    *,
    num_frames: int = 32,
    fps: float | None = None,
    pool_stride: int = 2,
    pool_mode: str = "average",
    batch_size: int | None = None,
    sampling: str = "exact",
    model: str | None = None,
    random_weights: bool = False,
    backend: str = "exact",
    allow_partial: bool = False,
    full_resolution_frames: bool = False,
) -> VideoTokens:
    """Sample a video's frames, encode each with the tower, and pool each frame's patch grid.

    Args:
        video: a video file, or a `VideoClip` already decoded (then `num_frames`, `fps`,
            `sampling` and `backend` are not used; the clip says how it was decoded).
        tower: a `vlm_vision.CLIPVisionTower` (any module with `image_transform`, `grid_size`,
            `select_layer`, `device` and float[B, 3, S, S] -> float[B, N, D] works).
        num_frames: frames sampled uniformly over the video (LLaVA-NeXT-Video uses 32).
        fps: sample about this many frames per second instead (at most `num_frames`).
        pool_stride: spatial pooling stride; 2 turns 24x24 into 12x12 = 144 tokens, 1 keeps all.
        pool_mode: "average", "max" or "bilinear" (see `video.spatial_pool`).
        batch_size: frames per tower call; None encodes all frames in one call.
        sampling: "exact" or "keyframe" (see `video.load_video`).
        model: the label stored with the tokens (a Hub id or a path); defaults to the tower's class.
        random_weights: record that the tower's weights are random.
        backend: "exact" or "decord", the decoder (see `video.load_video`); recorded with the tokens.
        allow_partial: accept a video that decodes fewer frames than it declares (see
            `video.load_video`); recorded with the tokens (`partial`).
        full_resolution_frames: decode frames at the video's resolution and resize them here, as
            earlier versions did, instead of having the decoder process resize them with the
            tower's transform's rule (`video.frame_scale`); recorded with the tokens (`frame_scale`).

    Returns:
        `VideoTokens` with tokens float[T, N', D] in the tower's dtype, on the tower's device.

    Raises:
        video.VideoDecodeError: when the file cannot be decoded.
        ValueError: for a non-positive batch size, or a tower that keeps the CLS token (it has no
            place on the pooling grid).

    Example:
        >>> vt = extract_video_tokens("cockatoo.mp4", tower, num_frames=8)
        >>> vt.tokens.shape
        torch.Size([8, 144, 1024])
    """
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    check_tower_pooling(tower, pool_stride, pool_mode)  # before decoding, which is the slow part
    if isinstance(video, VideoClip):
        clip = video
    elif isinstance(video, (str, os.PathLike)):
        scale = None if full_resolution_frames else tower.image_transform.frame_scale()
        clip = load_video(video, num_frames=num_frames, fps=fps, max_frames=num_frames if fps else None,
                          sampling=sampling, backend=backend, allow_partial=allow_partial, frame_scale=scale)
    else:
        raise TypeError(f"video must be a path or a VideoClip, got {type(video).__name__}")
    tokens = encode_frames(tower, clip.frames, stride=pool_stride, mode=pool_mode, batch_size=batch_size)  # (T, N', D)
    if isinstance(video, VideoClip):
        sampling = "keyframe" if clip.snapped else "exact"
    return tokens_for_clip(clip, tokens, tower, pool_stride=pool_stride, pool_mode=pool_mode,
                           model=model, random_weights=random_weights, sampling=sampling)


def tokens_for_clip(clip: VideoClip, tokens: torch.Tensor, tower: torch.nn.Module, *, pool_stride: int,
                    pool_mode: str, model: str | None, random_weights: bool, sampling: str) -> VideoTokens:
    """Wrap pooled tokens float[T, N', D] with the clip's and the tower's metadata."""
    t = tokens.shape[0]
    if t != len(clip.indices):
        raise ValueError(f"{t} token frames for a clip of {len(clip.indices)} frames ({clip.path})")
    return VideoTokens(
        tokens=tokens,
        indices=[int(i) for i in clip.indices],
        timestamps=[float(s) for s in clip.timestamps],
        native_fps=float(clip.native_fps),
        num_total_frames=int(clip.num_total_frames),
        duration=float(clip.duration),
        path=None if clip.path is None else str(clip.path),
        grid=tuple(tower.grid_size),
        pooled_grid=pooled_grid(tuple(tower.grid_size), pool_stride, pool_mode),
        pool_stride=pool_stride,
        pool_mode=pool_mode,
        model=model if model is not None else type(tower).__name__,
        layer=int(tower.select_layer),
        random_weights=random_weights,
        sampling=sampling,
        timestamp_shift=None if clip.timestamp_shift is None else [float(s) for s in clip.timestamp_shift],
        presentation_times=[float(s) for s in clip.presentation_times],
        backend=clip.backend,
        declared_frames=clip.declared_frames,
        partial=bool(clip.partial),
        frame_scale=clip.frame_scale,
    )


# ----- files ------------------------------------------------------------------------------------

def save_video_tokens(tokens: VideoTokens, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write `tokens` to one .safetensors file, atomically.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file is
    renamed over `path`: `path` either does not exist or is complete.

    Args:
        tokens: what to write.
        path: the .safetensors file.
        extra: more JSON-serialisable metadata (e.g. the settings of the run); its keys must not
            clash with `VideoTokens`' fields.

    Returns:
        The path written.
    """
    path = Path(path)
    meta = tokens.metadata()
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"extra metadata key {key!r} clashes with a VideoTokens field")
        meta[key] = json.dumps(value)
    data = safetensors_bytes({"tokens": tokens.tokens.detach().contiguous().cpu()}, metadata=meta)
    write_atomic(path, data)
    return path


@dataclasses.dataclass(frozen=True)
class TokenFileHeader:
    """What a token file's header says, read without its tensor."""

    shape: tuple[int, ...]
    """The shape of its `tokens` tensor: (T, N', D) in a well-formed file."""
    metadata: dict[str, Any]
    """The decoded metadata (`VideoTokens`' fields and any `extra`); empty when the format was not required."""


def read_token_header(path: str | os.PathLike, *, require_format: bool = True) -> TokenFileHeader:
    """The shape of a token file's `tokens` and its metadata, from the header only: the one reader of
    token files (`load_video_tokens`, resuming an extraction, checking a run's cached tokens, and the
    data scan all read through it).

    Args:
        path: a `.safetensors` token file.
        require_format: refuse a file that `save_video_tokens` did not write, and decode its
            metadata; False accepts any safetensors file with a `tokens` tensor (a cache written by
            another tool) and leaves `metadata` empty.

    Raises:
        ValueError: for a file that is not a vlm-vision video-tokens file (with `require_format`),
            or one without a `tokens` tensor.
    """
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
        keys = list(f.keys())
        shape = tuple(f.get_slice("tokens").get_shape()) if "tokens" in keys else None
    if require_format and raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a video-tokens file (format {raw.get('format')!r}, expected {FORMAT!r})")
    if shape is None:
        raise ValueError(f"{path} has no 'tokens' tensor (keys: {keys})")
    metadata = {k: json.loads(v) for k, v in raw.items() if k != "format"} if require_format else {}
    return TokenFileHeader(shape, metadata)


def load_video_tokens(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> VideoTokens:
    """Read a file written by `save_video_tokens`.

    Raises:
        ValueError: if the file is not a vlm-vision video-tokens file or lacks a field.
    """
    meta = read_token_header(path).metadata
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        tokens = f.get_tensor("tokens")  # (T, N', D)
    names = {f.name for f in dataclasses.fields(VideoTokens)} - {"tokens"}
    missing = sorted(n for n in names if n not in meta and _required(n))
    if missing:
        raise ValueError(f"{path}: video-tokens metadata lacks {missing}")
    fields = {k: v for k, v in meta.items() if k in names}
    for key in ("grid", "pooled_grid"):
        fields[key] = tuple(fields[key])
    return VideoTokens(tokens=tokens, **fields)


def _required(name: str) -> bool:
    field = next(f for f in dataclasses.fields(VideoTokens) if f.name == name)
    return field.default is dataclasses.MISSING
