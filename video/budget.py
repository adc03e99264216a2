"""How many frames a video gets and how hard each is pooled, from a token budget: pure numbers.

LLaVA-NeXT-Video gives every clip 32 frames of 144 tokens. Later models size a clip by its length
instead (LLaVA-Video: about 1 frame per second, at most 64 frames) or by a token budget (Qwen2.5-VL
shrinks frames to fit a most-pixels limit). `choose_video_budget` does both, by one rule:

1. **Frames.** Fixed-count mode (`fps=None`): `num_frames`. Rate mode: the frames `fps_indices`
   takes from the window, `ceil(window_frames / step)` with `step = max(1, round(native_fps / fps))`.
   The count is then clamped to `[min_frames, max_frames]`, where `max_frames` is first lowered to
   the most frames the budget can hold at the coarsest allowed stride (`frame_cap`). A window that
   holds fewer frames than `min_frames` repeats frames (uniform sampling), so `min_frames` is a
   promise about the token count, not about distinct frames.
2. **Stride.** The finest allowed pooling stride at which those frames fit in `max_tokens`
   (`stride_for_frames`). The stride depends on the frame count alone, so a model that sees T
   frames knows the stride without being told.
3. **No fit.** When even `min_frames` frames at the coarsest stride exceed `max_tokens`, a
   `ValueError` says so with every number; nothing is silently dropped.

Time coverage is kept before spatial detail: frames are dropped only when the coarsest stride
cannot hold them. LLaVA-Video's released setting (`fps=1`, `max_frames=64`, its `force_sample`
giving always 64 uniform frames) is fixed-count mode with 64 frames; without `force_sample` it is
rate mode with `fps=1, max_frames=64`. LLaVA-NeXT-Video is fixed-count mode with 32 frames and no
budget. Allowed strides run from the model's `pool_stride` up to twice it (`candidate_strides`),
each one the pooling mode accepts on the tower's grid.

`VideoLayout` bundles a model's video-token settings (grid, pooling, newlines, SlowFast, budget)
so that the processor, the training data, extraction and the model count tokens with one object.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from video.checks import positive_int
from video.pooling import NEWLINE_LAYOUTS, check_pool_mode, pooled_grid, stride_fits

__all__ = [
    "VideoBudget",
    "VideoLayout",
    "budget_frame_limit",
    "candidate_strides",
    "choose_video_budget",
    "frame_cap",
    "sampled_frame_count",
    "stride_for_frames",
]

TokenCount = Callable[[int, int], int]  # (frames, stride) -> tokens


@dataclass(frozen=True)
class VideoBudget:
    """What `choose_video_budget` decided for one video."""

    num_frames: int
    stride: int
    num_tokens: int


def _counter(tokens: Mapping[int, int] | TokenCount, strides: Sequence[int] | None) -> tuple[TokenCount, list[int]]:
    """A (frames, stride) -> tokens function and the allowed strides, finest first."""
    if isinstance(tokens, Mapping):
        per_frame = dict(tokens)
        return (lambda t, s: t * per_frame[s]), sorted(per_frame)
    if strides is None or len(strides) == 0:
        raise ValueError("with a token-count function, give the allowed strides (strides=...)")
    return tokens, sorted(int(s) for s in strides)


def sampled_frame_count(window_frames: int, native_fps: float, fps: float | None = None, *, num_frames: int = 32,
                        min_frames: int = 1, max_frames: int | None = None) -> int:
    """Frames the sampler takes before any token budget: step 1 of the rule.

    Example:
        >>> sampled_frame_count(300, 30.0, 1.0)  # 10 s at 1 fps
        10
        >>> sampled_frame_count(300, 30.0, 1.0, min_frames=16)
        16
    """
    window = positive_int(window_frames, "window_frames")
    low = positive_int(min_frames, "min_frames")
    if fps is None:
        count = positive_int(num_frames, "num_frames")
    else:
        if not (isinstance(native_fps, numbers.Real) and math.isfinite(native_fps) and native_fps > 0):
            raise ValueError(f"native_fps must be a positive number, got {native_fps!r}")
        if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        step = max(1, round(native_fps / fps))
        count = -(-window // step)
    if max_frames is not None:
        high = positive_int(max_frames, "max_frames")
        if high < low:
            raise ValueError(f"max_frames ({high}) is below min_frames ({low})")
        count = min(count, high)
    return max(count, low)


def frame_cap(max_tokens: int, tokens: Mapping[int, int] | TokenCount, strides: Sequence[int] | None = None) -> int:
    """The most frames that fit in `max_tokens` at the coarsest allowed stride (0 when not one).

    Example:
        >>> frame_cap(4096, {2: 144, 3: 64, 4: 36})  # 113 * 36 = 4068 <= 4096 < 114 * 36
        113
    """
    budget = positive_int(max_tokens, "max_tokens")
    count, allowed = _counter(tokens, strides)
    coarsest = allowed[-1]
    low, high = 0, budget  # every frame costs at least one token
    while low < high:  # largest t with count(t, coarsest) <= budget
        mid = (low + high + 1) // 2
        if count(mid, coarsest) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def stride_for_frames(num_frames: int, max_tokens: int | None, tokens: Mapping[int, int] | TokenCount,
                      strides: Sequence[int] | None = None) -> tuple[int, int]:
    """(stride, tokens): the finest allowed stride at which `num_frames` frames fit in `max_tokens`.

    Without a budget (`max_tokens=None`) the finest stride.

    Raises:
        ValueError: when they fit at no allowed stride (all counts in the message).

    Example:
        >>> stride_for_frames(64, 4096, {2: 144, 3: 64, 4: 36})  # 9216 and 4096 tokens: stride 3 fits
        (3, 4096)
    """
    frames = positive_int(num_frames, "num_frames")
    count, allowed = _counter(tokens, strides)
    if max_tokens is None:
        return allowed[0], count(frames, allowed[0])
    budget = positive_int(max_tokens, "max_tokens")
    for stride in allowed:
        n = count(frames, stride)
        if n <= budget:
            return stride, n
    costs = {s: count(frames, s) for s in allowed}
    raise ValueError(f"{frames} frames do not fit in max_video_tokens={budget} at any allowed pooling stride "
                     f"(tokens by stride: {costs}); allow more tokens or sample fewer frames")


def budget_frame_limit(max_frames: int | None, min_frames: int, max_tokens: int | None,
                       tokens: Mapping[int, int] | TokenCount, strides: Sequence[int] | None = None) -> int | None:
    """`max_frames` lowered to the most frames `max_tokens` holds (`frame_cap`); unchanged without a budget.

    Raises:
        ValueError: when `min_frames` frames exceed `max_tokens` even at the coarsest stride.
    """
    if max_tokens is None:
        return max_frames
    count, allowed = _counter(tokens, strides)
    fits = frame_cap(max_tokens, count, allowed)
    if fits < min_frames:
        coarsest = allowed[-1]
        raise ValueError(f"min_frames={min_frames} frames need {count(min_frames, coarsest)} tokens even at the "
                         f"coarsest allowed pooling stride {coarsest}, more than max_video_tokens={max_tokens} "
                         f"(which holds {fits} frames); raise max_video_tokens or lower min_frames")
    return fits if max_frames is None else min(max_frames, fits)


def choose_video_budget(window_frames: int, native_fps: float, *, tokens: Mapping[int, int] | TokenCount,
                        strides: Sequence[int] | None = None, fps: float | None = None, num_frames: int = 32,
                        min_frames: int = 1, max_frames: int | None = None,
                        max_tokens: int | None = None) -> VideoBudget:
    """Frame count, pooling stride and token count for one video (the rule in the module docstring).

    Args:
        window_frames: frames in the part of the video sampled from (the whole video, or a window).
        native_fps: the video's frame rate.
        tokens: tokens per frame at each allowed stride (`{2: 144, 3: 64, 4: 36}` for a 24x24 grid),
            or a function (frames, stride) -> tokens (newlines, SlowFast) with `strides`.
        strides: the allowed strides when `tokens` is a function.
        fps: frames per second of video to sample; None for fixed-count mode.
        num_frames: frames in fixed-count mode.
        min_frames: the fewest frames (more than the budget holds is an error, never a silent cut).
        max_frames: the most frames (None: no bound but the budget).
        max_tokens: the most visual tokens the video may take; None: no budget, finest stride.

    Returns:
        `VideoBudget(num_frames, stride, num_tokens)`.

    Raises:
        TypeError: a count that is not an int (`video.checks.positive_int`).
        ValueError: bad numbers, or `min_frames` frames that exceed `max_tokens` at every stride.

    Example:
        >>> choose_video_budget(1800, 30.0, fps=1.0, max_frames=64, tokens={2: 144})  # LLaVA-Video
        VideoBudget(num_frames=60, stride=2, num_tokens=8640)
    """
    count, allowed = _counter(tokens, strides)
    cap = budget_frame_limit(max_frames, min_frames, max_tokens, count, allowed)
    frames = sampled_frame_count(window_frames, native_fps, fps, num_frames=num_frames, min_frames=min_frames,
                                 max_frames=cap)
    stride, n = stride_for_frames(frames, max_tokens, count, allowed)
    return VideoBudget(frames, stride, n)


def candidate_strides(grid: tuple[int, int], pool_stride: int, mode: str, *, slowfast: bool = False) -> list[int]:
    """Strides a budget may choose: `pool_stride` up to twice it, each one `mode` can pool `grid` by
    (average and max need a stride that divides the grid; with SlowFast, twice the stride too).

    Example:
        >>> candidate_strides((24, 24), 2, "average")
        [2, 3, 4]
        >>> candidate_strides((24, 24), 2, "average", slowfast=True)  # fast frames pool by 6 and 8
        [2, 3, 4]
        >>> candidate_strides((16, 16), 2, "average")
        [2, 4]
    """
    check_pool_mode(mode)
    base = positive_int(pool_stride, "pool_stride")

    def ok(s: int) -> bool:
        return stride_fits(grid, s, mode)

    out = [s for s in range(base, 2 * base + 1) if ok(s) and (not slowfast or ok(2 * s))]
    if not out or out[0] != base:
        raise ValueError(f"{mode} pooling with stride {base}{' (and 2x for SlowFast)' if slowfast else ''} does not "
                         f"divide the {grid[0]}x{grid[1]} patch grid")
    return out


@dataclass(frozen=True)
class VideoLayout:
    """A model's video-token settings, and every count derived from them.

    Attributes:
        grid: the tower's patch grid (rows, cols), (24, 24) for ViT-L/14@336.
        pool_stride: the finest pooling stride (2: 144 tokens per frame).
        pool_mode: "average", "max" or "bilinear".
        newline: where `image_newline` goes ("no_token", "one_token", "frame", "grid").
        faster_token_stride: SlowFast (LLaVA-Video's `add_faster_video`): every k-th frame (0, k,
            2k, ...) is pooled at the stride, the others at twice it, and every frame is followed by
            the learned `faster_token`. None: off.
        max_video_tokens: the token budget of one video; None: none (always `pool_stride`).
    """

    grid: tuple[int, int] = (24, 24)
    pool_stride: int = 2
    pool_mode: str = "average"
    newline: str = "no_token"
    faster_token_stride: int | None = None
    max_video_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.newline not in NEWLINE_LAYOUTS:
            raise ValueError(f"unknown newline layout {self.newline!r}; choose from {tuple(NEWLINE_LAYOUTS)}")
        if self.faster_token_stride is not None:
            positive_int(self.faster_token_stride, "faster_token_stride")
        if self.max_video_tokens is not None:
            positive_int(self.max_video_tokens, "max_video_tokens")
        object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))
        self.strides()  # validates pooling against the grid

    def strides(self) -> list[int]:
        """Allowed strides, finest first (only `pool_stride` without a budget)."""
        allowed = candidate_strides(self.grid, self.pool_stride, self.pool_mode,
                                    slowfast=self.faster_token_stride is not None)
        return allowed if self.max_video_tokens is not None else allowed[:1]

    def pooled_grid(self, stride: int) -> tuple[int, int]:
        """(rows, cols) of a frame pooled by `stride`."""
        return pooled_grid(self.grid, stride, self.pool_mode)

    def is_slow(self, frame: int) -> bool:
        """Whether frame `frame` (0-based, in the clip) keeps the finer pooling under SlowFast."""
        return self.faster_token_stride is None or frame % self.faster_token_stride == 0

    def frame_tokens(self, num_frames: int, stride: int) -> list[int]:
        """Tokens of each frame in sequence order; a trailing `one_token` newline counts with the last.

        Example:
            >>> VideoLayout(newline="grid", faster_token_stride=2).frame_tokens(3, 2)  # 12*13+1, 6*7+1
            [157, 43, 157]
        """
        frames = positive_int(num_frames, "num_frames")
        per_frame = NEWLINE_LAYOUTS[self.newline] if self.newline != "one_token" else NEWLINE_LAYOUTS["no_token"]
        extra = 0 if self.faster_token_stride is None else 1  # the faster_token after every frame
        slow = per_frame(1, *self.pooled_grid(stride)) + extra
        fast = per_frame(1, *self.pooled_grid(2 * stride)) + extra
        counts = [slow if self.is_slow(f) else fast for f in range(frames)]
        if self.newline == "one_token":
            counts[-1] += 1
        return counts

    def count(self, num_frames: int, stride: int) -> int:
        """Tokens of a video of `num_frames` frames pooled by `stride`."""
        return sum(self.frame_tokens(num_frames, stride))

    def stride_for(self, num_frames: int) -> int:
        """The stride a video of `num_frames` frames is pooled by (the finest that fits the budget)."""
        return stride_for_frames(num_frames, self.max_video_tokens, self.count, self.strides())[0]

    def video_tokens(self, num_frames: int) -> int:
        """Tokens of a video of `num_frames` frames, at the stride the budget gives it."""
        return self.count(num_frames, self.stride_for(num_frames))

    def frame_limit(self, max_frames: int | None, min_frames: int = 1) -> int | None:
        """`max_frames` lowered to what the budget holds; raises when `min_frames` cannot fit."""
        return budget_frame_limit(max_frames, min_frames, self.max_video_tokens, self.count, self.strides())

    def budget(self, window_frames: int, native_fps: float, *, fps: float | None = None, num_frames: int = 32,
               min_frames: int = 1, max_frames: int | None = None) -> VideoBudget:
        """`choose_video_budget` with this layout's counts and budget."""
        return choose_video_budget(window_frames, native_fps, tokens=self.count, strides=self.strides(), fps=fps,
                                   num_frames=num_frames, min_frames=min_frames, max_frames=max_frames,
                                   max_tokens=self.max_video_tokens)
