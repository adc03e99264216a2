"""One video's tokens in the order the LLM reads them: pooling by the budget's stride, SlowFast, newlines.

`pool_video` pools one video's tower tokens at the stride `video.budget.VideoLayout` chose for its
frame count (and, for SlowFast, its fast frames at twice that stride); `arrange_video_tokens`
lays the projected frames out with LLaVA-NeXT's newline layouts and LLaVA-Video's `faster_token`.
Counts always agree with `VideoLayout.frame_tokens`, which the processor uses to expand `<video>`.

Two later LLaVA-Video options, both off by default (LLaVA-NeXT-Video uses neither):
- `max_video_tokens`, a token budget per video: a video of T frames is pooled at the finest stride
  from `pool_stride` up to twice it at which its tokens fit (`video.budget`), so long videos pool
  harder instead of overflowing the context. The stride is a function of T alone, so the
  processor, extraction and the model agree without passing it around.
- SlowFast (`faster_token_stride` k, LLaVA-Video's `add_faster_video`): frames 0, k, 2k, ... keep
  the stride s (slow), the others are pooled at 2s (fast), and every frame, in time order, is its
  tokens (with the newline layout applied to that frame) followed by the learned `faster_token`.
  LLaVA-Video's code defines this for the `grid` layout only; with `frame` the frame's newline
  comes before the `faster_token`, with `one_token` the single newline ends the video. LLaVA-Video
  pools after the projector; here both speeds are pooled on tower features, like everything else.

Shapes: T frames (T_s slow, T_f fast), N tokens per frame (N' after pooling), D_v tower width,
D LLM width, M tokens of the video.
"""

from __future__ import annotations

import torch

from video.budget import VideoLayout
from video.pooling import spatial_pool

__all__ = ["VIDEO_NEWLINES", "add_video_newlines", "arrange_video_tokens", "pool_video"]

VIDEO_NEWLINES = ("no_token", "one_token", "frame", "grid")


def pool_video(features: torch.Tensor, layout: VideoLayout, stride: int, *, pooled: bool,
               name: str = "video") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(slow, fast) pooled tower tokens of one video; fast is None without SlowFast.

    Args:
        features: float[T, N, D_v] tower tokens on the layout's grid, or (`pooled=True`) float[T, N', D_v]
            already pooled at `stride` (tokens written by `vlm-vision extract`).
        layout: the model's video settings.
        stride: the stride `layout.stride_for(T)` chose.
        pooled: whether `features` are already pooled at `stride`.
        name: how errors name the video.

    Returns:
        slow float[T_s, N'_s, D_v] (frames 0, k, 2k, ...; all frames without SlowFast) and fast
        float[T - T_s, N'_f, D_v] pooled at twice the stride.

    Raises:
        ValueError: tokens per frame that do not match the grid or the stride; SlowFast on
            precomputed bilinear tokens (their fast pooling cannot be derived exactly).
    """
    t, n, _ = features.shape
    rows, cols = layout.pooled_grid(stride)
    if pooled:
        if n != rows * cols:
            raise ValueError(f"{name}: precomputed tokens have {n} tokens per frame, but {t} frames are pooled at "
                             f"stride {stride} ({rows}x{cols} = {rows * cols} tokens) by this model's budget "
                             f"(max_video_tokens={layout.max_video_tokens}); extract with the same settings")
        slow_all = features  # (T, N', D_v)
    else:
        slow_all = spatial_pool(features, grid=layout.grid, stride=stride, mode=layout.pool_mode)  # (T, N', D_v)
    if layout.faster_token_stride is None:
        return slow_all, None
    k = layout.faster_token_stride
    slow_index = list(range(0, t, k))
    fast_index = [f for f in range(t) if f % k]
    if pooled:
        if layout.pool_mode == "bilinear":
            raise ValueError(f"{name}: SlowFast needs the fast frames pooled at stride {2 * stride}, which "
                             f"precomputed bilinear tokens cannot give exactly; pass frames instead")
        fast = spatial_pool(features[fast_index], grid=(rows, cols), stride=2, mode=layout.pool_mode)  # (T_f, N'_f, D_v)
    else:
        fast = spatial_pool(features[fast_index], grid=layout.grid, stride=2 * stride,
                            mode=layout.pool_mode)  # (T_f, N'_f, D_v)
    return slow_all[slow_index], fast


def add_video_newlines(features: torch.Tensor, newline: torch.Tensor, *, grid: tuple[int, int],
                       layout: str) -> torch.Tensor:
    """Flatten one video's projected tokens into sequence order, with LLaVA-NeXT's newline layouts.

    Args:
        features: float[T, N', D], N' = rows * cols of the pooled grid.
        newline: float[D], the learned `image_newline` embedding.
        grid: the pooled grid (rows, cols), e.g. (12, 12).
        layout: "no_token" (T*N'), "one_token" (T*N' + 1), "frame" (T*(N' + 1)) or "grid" (T*rows*(cols + 1)).

    Returns:
        float[M, D] in the order the tokens take in the prompt.

    Raises:
        ValueError: for an unknown layout or a grid that does not match N'.
    """
    t, n, d = features.shape
    rows, cols = grid
    if rows * cols != n:
        raise ValueError(f"pooled grid {rows}x{cols} does not hold the {n} tokens per frame")
    newline = newline.to(features.dtype)
    if layout == "no_token":
        return features.reshape(t * n, d)  # (T*N', D)
    if layout == "one_token":
        return torch.cat([features.reshape(t * n, d), newline[None]])  # (T*N' + 1, D)
    if layout == "frame":
        ends = newline.expand(t, 1, d)  # (T, 1, D)
        return torch.cat([features, ends], dim=1).reshape(t * (n + 1), d)  # (T*(N'+1), D)
    if layout == "grid":
        x = features.reshape(t, rows, cols, d)  # (T, rows, cols, D)
        ends = newline.expand(t, rows, 1, d)  # (T, rows, 1, D)
        return torch.cat([x, ends], dim=2).reshape(t * rows * (cols + 1), d)  # (T*rows*(cols+1), D)
    raise ValueError(f"unknown video_newline layout {layout!r}; choose from {VIDEO_NEWLINES}")


def arrange_video_tokens(slow: torch.Tensor, fast: torch.Tensor | None, newline: torch.Tensor, *,
                         slow_grid: tuple[int, int], fast_grid: tuple[int, int] | None, layout: str,
                         faster_token: torch.Tensor | None = None,
                         faster_token_stride: int | None = None) -> torch.Tensor:
    """One video's projected tokens in sequence order, with newlines and (SlowFast) faster tokens.

    Without SlowFast this is `add_video_newlines(slow, ...)`. With it, frame f of the video is the
    next row of `slow` when f % k == 0 and the next row of `fast` otherwise; each frame's tokens get
    the newline layout of that frame, then `faster_token`; a `one_token` newline ends the video.

    Args:
        slow: float[T_s, N_s, D], the slow frames (0, k, 2k, ...) or all frames without SlowFast.
        fast: float[T - T_s, N_f, D], the other frames, or None without SlowFast.
        newline: float[D], `image_newline`.
        slow_grid, fast_grid: (rows, cols) of the slow and fast frames.
        layout: the newline layout (`VIDEO_NEWLINES`).
        faster_token: float[D], LLaVA-Video's learned token after every frame (SlowFast only).
        faster_token_stride: k; None for no SlowFast.

    Returns:
        float[M, D], M as `video.budget.VideoLayout.count` says.
    """
    if faster_token_stride is None:
        return add_video_newlines(slow, newline, grid=slow_grid, layout=layout)
    if fast is None or faster_token is None or fast_grid is None:
        raise ValueError("SlowFast needs the fast frames, their grid and the faster_token")
    frames = slow.shape[0] + fast.shape[0]
    if slow.shape[0] != -(-frames // faster_token_stride):
        raise ValueError(f"{frames} frames with faster_token_stride {faster_token_stride} have "
                         f"{-(-frames // faster_token_stride)} slow frames, got {slow.shape[0]}")
    per_frame = "no_token" if layout == "one_token" else layout
    end = faster_token.to(slow.dtype)[None]  # (1, D)

    def frame_rows(x: torch.Tensor, grid: tuple[int, int]) -> list[torch.Tensor]:
        if x.shape[0] == 0:  # a clip with no fast frame (fewer than 2 frames)
            return []
        rows = add_video_newlines(x, newline, grid=grid, layout=per_frame)  # (T_x * (N_x + newlines), D)
        return list(rows.unflatten(0, (x.shape[0], -1)))  # T_x x (N_x + newlines, D)

    # each row: one frame's tokens with its newlines, (N_* + newlines, D)
    pieces, next_slow, next_fast = [], iter(frame_rows(slow, slow_grid)), iter(frame_rows(fast, fast_grid))
    for f in range(frames):
        pieces += [next(next_slow) if f % faster_token_stride == 0 else next(next_fast), end]
    if layout == "one_token":
        pieces.append(newline.to(slow.dtype)[None])
    return torch.cat(pieces)  # (M, D)
