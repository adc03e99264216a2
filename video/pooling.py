"""Spatial pooling of per-frame patch tokens, and how many tokens a video costs the LLM.

CLIP ViT-L/14@336 gives each frame a 24x24 grid of 576 tokens; 32 frames would be 18432 tokens.
LLaVA-NeXT-Video pools each frame's grid 2x2 down to 12x12 = 144 tokens (4608 for 32 frames).
Pooling is a pure function of an explicit `(h, w)` grid, so non-square grids work and a wrong
token count fails here rather than as a reshape error deep inside the model.

Modes (reference §3.3): `average` and `max` are `AvgPool2d`/`MaxPool2d` with kernel = stride, as
transformers' `LlavaNextVideoPooler` and NeXT-Video-v1 (the grid must divide by the stride);
`bilinear` resizes the grid to `ceil(h/s) x ceil(w/s)` with `F.interpolate`, as the later
LLaVA-NeXT `get_2dPool`. Where pooling sits (before or after the projector) is the caller's
choice; this function does not care about the width D.

Shapes: T frames, N = h*w tokens per frame, D width, h/w grid rows/columns.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["spatial_pool", "num_video_tokens", "check_pool_mode", "check_pooling", "pooled_grid", "stride_fits",
           "POOL_MODES", "NEWLINE_LAYOUTS"]

PoolMode = Literal["average", "max", "bilinear"]
POOL_MODES: tuple[str, ...] = ("average", "max", "bilinear")

# tokens per video for T frames of a pooled h x w grid, by where `image_newline` tokens go (§3.4)
NEWLINE_LAYOUTS: dict[str, Callable[[int, int, int], int]] = {
    "no_token": lambda t, h, w: t * h * w,  # frames flattened (NeXT-Video-v1, transformers)
    "one_token": lambda t, h, w: t * h * w + 1,  # one newline after the whole video
    "frame": lambda t, h, w: t * (h * w + 1),  # one newline after each frame
    "grid": lambda t, h, w: t * h * (w + 1),  # one newline after each row of each frame
}


def _check_grid(grid: tuple[int, int], stride: int, *, stride_name: str = "stride") -> tuple[int, int, int]:
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or not all(isinstance(v, numbers.Integral) and v >= 1 for v in grid)):
        raise ValueError(f"grid must be two positive ints (rows, columns), got {grid!r}")
    if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride < 1:
        raise ValueError(f"{stride_name} must be an int >= 1, got {stride!r}")
    return int(grid[0]), int(grid[1]), int(stride)


def check_pool_mode(mode: str, *, name: str = "pooling mode") -> None:
    """Raise ValueError, naming the argument (`name`) and the choices, for a mode not in `POOL_MODES`."""
    if mode not in POOL_MODES:
        raise ValueError(f"unknown {name} {mode!r}; choose from {POOL_MODES}")


def stride_fits(grid: tuple[int, int], stride: int, mode: str) -> bool:
    """Whether `mode` can pool `grid` by `stride`: bilinear always, average/max when it divides both sides."""
    return mode == "bilinear" or (grid[0] % stride == 0 and grid[1] % stride == 0)


def check_pooling(grid: tuple[int, int], stride: int, mode: str, *, of_tower: bool = False) -> tuple[int, int, int]:
    """Fail early, with the values, on a pooling that `spatial_pool` cannot do on `grid`.

    Args:
        grid: (h, w), rows and columns of the token grid.
        stride: the pooling stride.
        mode: one of `POOL_MODES`.
        of_tower: the grid is a tower's patch grid and `stride`/`mode` are a model's or an
            extraction's `pool_stride`/`pool_mode`: the messages name them so.

    Returns:
        (h, w, stride) as ints.

    Raises:
        ValueError: a grid that is not two positive ints, a stride that is not an int >= 1, an
            unknown mode, or (average/max) a stride that does not divide the grid.
    """
    h, w, s = _check_grid(grid, stride, stride_name="pool_stride" if of_tower else "stride")
    check_pool_mode(mode, name="pool_mode" if of_tower else "pooling mode")
    if not stride_fits((h, w), s, mode):
        if of_tower:
            raise ValueError(f"{mode} pooling with stride {s} does not divide the tower's {h}x{w} patch grid; use a "
                             f"stride that divides it or pool_mode='bilinear' (rounds up)")
        raise ValueError(f"{mode} pooling needs a grid divisible by the stride: grid {h}x{w}, stride {s}")
    return h, w, s


def pooled_grid(grid: tuple[int, int], stride: int, mode: str) -> tuple[int, int]:
    """The grid after pooling: exact division for average/max, rounded up for bilinear.

    Example:
        >>> pooled_grid((24, 24), 2, "average"), pooled_grid((5, 6), 2, "bilinear")
        ((12, 12), (3, 3))
    """
    h, w = grid
    if mode == "bilinear":
        return -(-h // stride), -(-w // stride)
    return h // stride, w // stride


def spatial_pool(
    features: torch.Tensor,
    *,
    grid: tuple[int, int] = (24, 24),
    stride: int = 2,
    mode: PoolMode = "average",
) -> torch.Tensor:
    """Pool each frame's (h, w) token grid by `stride`.

    Args:
        features: float[T, N, D], tokens of each frame in row-major grid order, N = h * w.
        grid: (h, w), rows and columns of the token grid.
        stride: pooling factor along both axes (kernel = stride for average/max).
        mode: "average", "max" or "bilinear".

    Returns:
        float[T, N', D] with N' = (h / s) * (w / s) for average/max and
        ceil(h / s) * ceil(w / s) for bilinear, in row-major order; same dtype as `features`.

    Raises:
        ValueError: N is not h * w, an unknown mode, or (average/max) a grid the stride does
            not divide.

    Example:
        >>> spatial_pool(torch.zeros(32, 576, 1024)).shape
        torch.Size([32, 144, 1024])
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        raise ValueError(f"features must be a (T, N, D) tensor, got {getattr(features, 'shape', type(features))}")
    h, w, s = check_pooling(grid, stride, mode)
    t, n, d = features.shape
    if n != h * w:
        raise ValueError(f"features have {n} tokens per frame but grid {h}x{w} needs {h * w}")
    x = features.reshape(t, h, w, d).permute(0, 3, 1, 2)  # (T, D, h, w)
    if mode == "average":
        x = F.avg_pool2d(x, kernel_size=s, stride=s)  # (T, D, h/s, w/s)
    elif mode == "max":
        x = F.max_pool2d(x, kernel_size=s, stride=s)  # (T, D, h/s, w/s)
    else:
        x = F.interpolate(x, size=(math.ceil(h / s), math.ceil(w / s)), mode="bilinear")  # (T, D, h', w')
    return x.flatten(2).transpose(1, 2)  # (T, N', D)


def num_video_tokens(
    num_frames: int, *, grid: tuple[int, int] = (24, 24), stride: int = 2, newline: str = "no_token"
) -> int:
    """Visual tokens a video of `num_frames` frames takes in the LLM's sequence.

    Each frame pools to `ceil(h/s) x ceil(w/s)` tokens (12 x 12 = 144 for CLIP-336 and stride 2);
    `newline` says where LLaVA-NeXT puts its learned `image_newline` tokens (reference §3.4):
    "no_token" none (T*144; NeXT-Video-v1 and transformers), "one_token" one at the end
    (T*144+1), "frame" one after each frame (T*145), "grid" one after each row (T*12*13).

    Args:
        num_frames: frames in the video (>= 1).
        grid: (h, w) token grid of one frame before pooling.
        stride: pooling factor.
        newline: one of `NEWLINE_LAYOUTS`.

    Returns:
        The number of tokens.

    Raises:
        ValueError: an unknown newline layout or a non-positive count.

    Example:
        >>> num_video_tokens(32), num_video_tokens(32, newline="grid")
        (4608, 4992)
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    h, w, s = _check_grid(grid, stride)
    if newline not in NEWLINE_LAYOUTS:
        raise ValueError(f"unknown newline layout {newline!r}; choose from {tuple(NEWLINE_LAYOUTS)}")
    return NEWLINE_LAYOUTS[newline](int(num_frames), math.ceil(h / s), math.ceil(w / s))
