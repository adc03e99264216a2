"""The steps of fusion, each a small function: tower, projector, splice, labels, positions.

`VisionLanguageModel` (`vlm_vision.model.fusion`) runs them in this order: images and videos through the
tower (videos folded into one batch of frames and pooled on the patch grid, `video.tower_pooling`),
features through the projector in the projector's dtype (`project`, also used by the anyres path),
then the visual tokens written over the placeholder rows with one `masked_scatter` (`splice`). A
count mismatch there is an error naming both counts, never a silent shift.

Labels at visual positions become -100 (`mask_labels`; transformers leaves that to the caller).
Position ids are counted from each sample's first real token, as LLaVA does, so a sample gives the
same logits alone or in a left- or right-padded batch. (RoPE only sees relative positions and would
not notice the shift that left padding causes; LLMs with absolute position embeddings would.)

Shapes: B batch, L sequence, I images, V videos, T frames, S image side, N tokens per image or
frame (N' after pooling), D_v tower width, D LLM width, M visual tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from video.tower_pooling import encode_pixels, require_patch_tokens
from vlm_vision.model.placeholders import IGNORE_INDEX
from vlm_vision.model.tower import CLIPVisionTower

__all__ = [
    "Videos",
    "check_input_ids",
    "check_media",
    "encode_images",
    "encode_videos",
    "feature_list",
    "mask_labels",
    "position_ids_from_mask",
    "project",
    "splice",
    "video_list",
    "video_tower_features",
]

Videos = Union[torch.Tensor, Sequence[torch.Tensor]]
"""float[V, T, ...] or a list of float[T_v, ...]: videos of equal or different frame counts."""


def encode_images(tower: CLIPVisionTower, pixel_values: torch.Tensor) -> torch.Tensor:
    """Tower tokens of single-crop images (LLaVA-1.5); the one place images meet the tower.

    Args:
        pixel_values: float[I, 3, S, S], preprocessed by `tower.image_transform`.

    Returns:
        float[I, N, D_v] (N = 576 for ViT-L/14@336).
    """
    return tower(pixel_values)


def video_tower_features(tower: CLIPVisionTower, videos: Videos) -> list[torch.Tensor]:
    """Unpooled tower tokens of each video: frames folded into one tower batch, then unfolded.

    Args:
        videos: float[V, T, 3, S, S], or a list of float[T_v, 3, S, S] when frame counts differ.

    Returns:
        One float[T_v, N, D_v] per video, in order.

    Raises:
        ValueError: for a tensor that is not [V, T, 3, S, S], or a tower that keeps the CLS token.
    """
    clips = video_list(videos)
    require_patch_tokens(tower)
    lengths = [clip.shape[0] for clip in clips]
    features = tower(torch.cat(clips))  # (sum T, N, D_v)
    return list(features.split(lengths))  # V x (T_v, N, D_v)


def encode_videos(tower: CLIPVisionTower, videos: Videos, *, stride: int, mode: str) -> list[torch.Tensor]:
    """Pooled tower tokens of each video: frames folded into one batch, `video.tower_pooling.encode_pixels`, unfolded.

    Args:
        videos: float[V, T, 3, S, S], or a list of float[T_v, 3, S, S] when frame counts differ.
        stride: pooling window and stride on the patch grid (2: 24x24 -> 12x12).
        mode: pooling mode passed to `video.spatial_pool` ("average" in every released model).

    Returns:
        One float[T_v, N', D_v] per video, in order.
    """
    clips = video_list(videos)
    lengths = [clip.shape[0] for clip in clips]
    pooled = encode_pixels(tower, torch.cat(clips), stride=stride, mode=mode)  # (sum T, N', D_v)
    return list(pooled.split(lengths))  # V x (T_v, N', D_v)


def project(projector: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Map tower features float[..., D_v] to LLM width float[..., D] (in the projector's dtype)."""
    param = next(projector.parameters(), None)
    if param is not None:
        features = features.to(device=param.device, dtype=param.dtype)
    return projector(features)


def splice(inputs_embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, features: torch.Tensor, *,
           what: str) -> torch.Tensor:
    """Write visual tokens over the placeholder rows, in prompt order (row-major over the batch).

    Args:
        inputs_embeds: float[B, L, D], the embedded prompt.
        input_ids: long[B, L].
        token_id: the placeholder id.
        features: float[M, D]; M must equal the number of placeholders.
        what: how the error message names the features ("images", "videos" and their counts).

    Returns:
        float[B, L, D], a new tensor.

    Raises:
        ValueError: stating both counts, in tokens, when they differ.
    """
    mask = input_ids == token_id  # (B, L)
    n_tokens, n_features = int(mask.sum()), features.shape[0]
    if n_tokens != n_features:
        per_sample = mask.sum(dim=1).tolist()
        raise ValueError(f"the prompt holds {n_tokens} placeholder tokens (id {token_id}; per sample {per_sample}) "
                         f"but the {what} give {n_features} tokens; expand each placeholder to exactly its "
                         f"token count (VisionLanguageProcessor does) and never truncate inside a visual span")
    features = features.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)  # (B, L, D)


def mask_labels(labels: torch.Tensor, input_ids: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """A copy of `labels` (long[B, L]) with -100 wherever `input_ids` holds a visual placeholder."""
    visual = torch.isin(input_ids, torch.tensor(list(token_ids), device=input_ids.device))  # (B, L)
    return labels.masked_fill(visual, IGNORE_INDEX)


def position_ids_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Positions counted from each sample's first real token: long[B, length].

    `attention_mask` (long[B, L_past + length]) may cover cached tokens too; the last `length`
    positions are returned. Padding positions get 0 or repeat the last real position; the mask
    hides them anyway.
    """
    positions = attention_mask.long().cumsum(-1) - 1  # (B, L_past + length)
    return positions.clamp(min=0)[:, -length:]  # (B, length)


def check_input_ids(input_ids: torch.Tensor, vocab: int) -> None:
    """Fail at the boundary on ids that are not long[B, L] or that the LLM's `vocab` rows cannot embed."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        shape = list(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be long[B, L], got {shape}")
    if input_ids.numel() and (int(input_ids.max()) >= vocab or int(input_ids.min()) < 0):
        raise ValueError(f"input_ids hold ids in [{int(input_ids.min())}, {int(input_ids.max())}] but the LLM "
                         f"embeds {vocab}; after adding <image>/<video> to the tokenizer, resize the LLM's "
                         f"embeddings (VisionLanguageProcessor.resize_embeddings)")


def check_media(token_id: int | None, media: object, input_ids: torch.Tensor, kind: str) -> None:
    """Fail when media of `kind` ("image", "video") come without a placeholder id, or placeholders without media."""
    if token_id is None:
        raise ValueError(f"{kind}s were given but this model has no {kind}_token_id")
    if media is None:
        n = int((input_ids == token_id).sum())
        raise ValueError(f"the prompt holds {n} {kind} placeholder tokens (id {token_id}) but no {kind}s were given")


def video_list(videos: Videos) -> list[torch.Tensor]:
    """Videos as a list of float[T_v, 3, S, S], checked (from float[V, T, 3, S, S] or a list)."""
    if isinstance(videos, torch.Tensor):
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ValueError(f"pixel_values_videos must be float[V, T, 3, S, S], got shape {list(videos.shape)}")
        return list(videos.unbind(0))
    clips = list(videos)
    for i, clip in enumerate(clips):
        if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[1] != 3:
            shape = list(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
            raise ValueError(f"video {i} must be float[T, 3, S, S], got {shape}")
    return clips


def feature_list(video_features: Videos) -> list[torch.Tensor]:
    """Precomputed video tokens as a list of float[T_v, N', D_v], checked (from float[V, T, N', D_v] or a list)."""
    if isinstance(video_features, torch.Tensor):
        if video_features.ndim != 4:
            raise ValueError(f"video_features must be float[V, T, N', D_v] or a list of float[T, N', D_v], "
                             f"got shape {list(video_features.shape)}")
        return list(video_features.unbind(0))
    clips = list(video_features)
    for i, clip in enumerate(clips):
        if not isinstance(clip, torch.Tensor) or clip.ndim != 3:
            shape = list(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
            raise ValueError(f"video_features[{i}] must be float[T, N', D_v], got {shape}")
    return clips
