"""Frames through a frozen tower, pooled per frame: the one place tower -> pool is written.

Each frame goes through the tower as an independent image (frames are the batch), and its patch
grid is pooled with `video.spatial_pool` on the tower's `grid_size`. The CLS token has no place
on that grid, so the tower must give patch tokens only. Extraction (`video.extract`,
`vlm-vision extract`) and the model (`vlm_vision.model.fusion.encode_videos`) both call this module.

The tower is an argument: any module with `grid_size`, `select_feature`, `image_transform`,
`device` and float[B, 3, S, S] -> float[B, N, D] works (`vlm_vision.CLIPVisionTower` does).

Shapes: T frames, b frames per tower call, H/W pixels, S tower input side, N patch tokens per
frame, N' pooled tokens per frame, D tower width.
"""

from __future__ import annotations

import torch

from video.pooling import check_pooling, spatial_pool

__all__ = ["DTYPES", "check_tower_pooling", "encode_frames", "encode_pixels", "require_patch_tokens"]

# The dtypes a tower (and the LLM beside it) load in, by the names that flags, configs and the
# `dtype` of a token file use.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def require_patch_tokens(tower: torch.nn.Module) -> None:
    """Raise ValueError when the tower keeps the CLS token (video pooling needs patch tokens only)."""
    if tower.select_feature != "patch":
        raise ValueError(f"the tower keeps the CLS token (select_feature={tower.select_feature!r}); videos are "
                         f"pooled on the patch grid, so the tower must drop it: build it with select_feature='patch'")


def check_tower_pooling(tower: torch.nn.Module, stride: int, mode: str) -> None:
    """Fail early when the tower's output cannot be pooled as asked.

    Raises:
        ValueError: the tower keeps the CLS token, or `video.pooling.check_pooling` refuses the
            stride and mode on the tower's patch grid.
    """
    require_patch_tokens(tower)
    check_pooling(tuple(tower.grid_size), stride, mode, of_tower=True)


def encode_pixels(tower: torch.nn.Module, pixels: torch.Tensor, *, stride: int, mode: str,
                  batch_size: int | None = None) -> torch.Tensor:
    """Preprocessed frames float[T, 3, S, S] -> pooled tokens float[T, N', D], `batch_size` frames per tower call.

    Raises:
        ValueError: as `check_tower_pooling`.
    """
    check_tower_pooling(tower, stride, mode)
    step = pixels.shape[0] if batch_size is None else batch_size
    pooled = []
    for chunk in pixels.split(max(step, 1)):  # (b, 3, S, S) each
        features = tower(chunk)  # (b, N, D)
        pooled.append(spatial_pool(features, grid=tower.grid_size, stride=stride, mode=mode))  # (b, N', D)
    return torch.cat(pooled)  # (T, N', D)


def encode_frames(tower: torch.nn.Module, frames: torch.Tensor, *, stride: int, mode: str,
                  batch_size: int | None = None) -> torch.Tensor:
    """Decoded frames uint8[T, H, W, 3] -> pooled tokens float[T, N', D].

    Frames travel to the tower's device as uint8 (a quarter of the bytes of float32) and are
    preprocessed there by the tower's `image_transform`, `batch_size` frames at a time (all at once
    when None), so only one batch of float pixels is ever held.

    Raises:
        ValueError: as `check_tower_pooling`.
    """
    check_tower_pooling(tower, stride, mode)
    step = frames.shape[0] if batch_size is None else batch_size
    pooled = []
    for chunk in frames.split(max(step, 1)):  # (b, H, W, 3) uint8
        pixels = tower.image_transform(chunk.to(tower.device, non_blocking=True))  # (b, 3, S, S) on the device
        pooled.append(encode_pixels(tower, pixels, stride=stride, mode=mode))  # (b, N', D)
    return torch.cat(pooled)  # (T, N', D)
