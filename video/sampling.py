"""Which frames to decode: pure functions of frame counts and rates, no decoder in sight.

LLaVA-NeXT-Video samples a clip in one of two ways (reference §3.1):

- **uniform** (NeXT-Video-v1, the HF model card, the default here): `num_frames` indices spread
  evenly from the first to the last frame, endpoints included, `np.linspace(0, total - 1, n)`
  truncated to int. A 1800-frame video and 32 frames gives 0, 58, 116, ..., 1799.
- **fps** (the later NeXT/OneVision training code): every `round(native_fps / target_fps)`-th
  frame, so about `target_fps` frames per second of video, replaced by uniform sampling of
  `max_frames` when that would give more than `max_frames`.

Both work inside an optional window `[start_frame, end_frame)`; `time_window_to_frames` turns a
window given in seconds into one. Timestamps are always seconds, `index / native_fps` (LLaVA-NeXT's
training code divides by the rounded frame *step* instead, which is not a time; we do not copy
that). `snap_to_keyframes` serves the fast keyframe mode of `video.decode.load_video`.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Sequence

import numpy as np

__all__ = [
    "uniform_indices",
    "fps_indices",
    "time_window_to_frames",
    "indices_to_timestamps",
    "snap_to_keyframes",
]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def _window(num_total_frames: int, start_frame: int, end_frame: int | None) -> tuple[int, int]:
    """Validate `[start_frame, end_frame)` against the video and return it with `end` filled in."""
    total = _check_int("num_total_frames", num_total_frames, 1)
    start = _check_int("start_frame", start_frame, 0)
    end = total if end_frame is None else _check_int("end_frame", end_frame, 1)
    if end > total:
        raise ValueError(f"end_frame {end} is past the end of a {total}-frame video")
    if start >= end:
        raise ValueError(f"empty frame window: start_frame {start} >= end_frame {end}")
    return start, end


def uniform_indices(
    num_total_frames: int, num_frames: int, *, start_frame: int = 0, end_frame: int | None = None
) -> list[int]:
    """`num_frames` indices spread evenly over a video, first and last frame included.

    This is LLaVA-NeXT-Video's rule, `np.linspace(start, end - 1, num_frames)` truncated to int.
    When the window holds fewer frames than asked, the result still has exactly `num_frames`
    entries and some frames repeat, so the token count of a clip never depends on its length.

    Args:
        num_total_frames: frames in the video (>= 1).
        num_frames: indices to return (>= 1). With 1, the first frame of the window.
        start_frame: first frame of the window.
        end_frame: one past the last frame of the window; None means the end of the video.

    Returns:
        Non-decreasing frame indices in `[start_frame, end_frame)`.

    Raises:
        ValueError: a count below 1, or a window that is empty or runs past the video.

    Example:
        >>> uniform_indices(10, 4)
        [0, 3, 6, 9]
        >>> uniform_indices(3, 5)
        [0, 0, 1, 1, 2]
    """
    n = _check_int("num_frames", num_frames, 1)
    start, end = _window(num_total_frames, start_frame, end_frame)
    return np.linspace(start, end - 1, n).astype(np.int64).tolist()


def fps_indices(
    num_total_frames: int,
    native_fps: float,
    target_fps: float = 1.0,
    max_frames: int | None = None,
    *,
    min_frames: int = 1,
    start_frame: int = 0,
    end_frame: int | None = None,
) -> list[int]:
    """About `target_fps` frames per second of video, as the later LLaVA-NeXT training code does.

    Takes every `step`-th frame of the window from its first frame on, with
    `step = max(1, round(native_fps / target_fps))` (Python's `round`, as the reference). When that
    gives more than `max_frames` indices, returns `uniform_indices(..., max_frames)` instead; when
    fewer than `min_frames`, `uniform_indices(..., min_frames)` (frames repeat in a short window).
    `video.budget.sampled_frame_count` gives the length of the result without a video.

    Args:
        num_total_frames: frames in the video (>= 1).
        native_fps: the video's frame rate (> 0).
        target_fps: wanted frames per second of video (> 0).
        max_frames: upper bound on the number of indices; None for no bound.
        min_frames: lower bound on the number of indices (LLaVA-Video's `min_frames`).
        start_frame: first frame of the window.
        end_frame: one past the last frame of the window; None means the end of the video.

    Returns:
        Increasing frame indices in `[start_frame, end_frame)`.

    Raises:
        ValueError: a non-positive rate or `max_frames`, or a bad window.

    Example:
        >>> fps_indices(100, 30.0)  # step 30
        [0, 30, 60, 90]
        >>> fps_indices(100, 30.0, target_fps=2.0, max_frames=4)  # step 15 gives 7 > 4
        [0, 33, 66, 99]
    """
    fps = _check_rate("native_fps", native_fps)
    target = _check_rate("target_fps", target_fps)
    start, end = _window(num_total_frames, start_frame, end_frame)
    low = _check_int("min_frames", min_frames, 1)
    if max_frames is not None and _check_int("max_frames", max_frames, 1) < low:
        raise ValueError(f"max_frames ({max_frames}) is below min_frames ({low})")
    step = max(1, round(fps / target))
    indices = list(range(start, end, step))
    if max_frames is not None and len(indices) > max_frames:
        return uniform_indices(num_total_frames, max_frames, start_frame=start, end_frame=end)
    if len(indices) < low:
        return uniform_indices(num_total_frames, low, start_frame=start, end_frame=end)
    return indices


def time_window_to_frames(
    num_total_frames: int, native_fps: float, start: float | None = None, end: float | None = None
) -> tuple[int, int]:
    """Turn a window in seconds into the frame window `[start_frame, end_frame)`.

    Frame `i` is shown at `i / native_fps` seconds; the window keeps the frames shown at a time
    `t` with `start <= t < end`. An `end` past the end of the video is clamped to it.

    Args:
        num_total_frames: frames in the video (>= 1).
        native_fps: the video's frame rate (> 0).
        start: window start in seconds (>= 0); None means 0.
        end: window end in seconds (> start); None means the end of the video.

    Returns:
        `(start_frame, end_frame)`, a non-empty window.

    Raises:
        ValueError: negative or reversed times, a start at or past the end of the video, or a
            window too short to hold any frame.

    Example:
        >>> time_window_to_frames(300, 30.0, 2.0, 4.5)
        (60, 135)
    """
    total = _check_int("num_total_frames", num_total_frames, 1)
    fps = _check_rate("native_fps", native_fps)
    t0 = 0.0 if start is None else float(start)
    t1 = math.inf if end is None else float(end)
    if not (math.isfinite(t0) and t0 >= 0):
        raise ValueError(f"start must be a time >= 0 seconds, got {start}")
    if t1 <= t0:
        raise ValueError(f"end ({end} s) must be after start ({t0} s)")
    duration = total / fps
    if t0 >= duration:
        raise ValueError(f"start {t0} s is at or past the end of the video ({duration:.3f} s, {total} frames)")
    eps = 1e-6  # a time given to the microsecond lands on the frame it names
    first = math.ceil(t0 * fps - eps)
    last = total if math.isinf(t1) else min(total, math.ceil(t1 * fps - eps))
    if first >= last:
        raise ValueError(f"the window [{t0}, {end}) s holds no frame at {fps} fps")
    return first, last


def indices_to_timestamps(indices: Sequence[int], native_fps: float) -> list[float]:
    """Seconds at which each frame is shown: `index / native_fps`.

    Example:
        >>> indices_to_timestamps([0, 15, 30], 30.0)
        [0.0, 0.5, 1.0]
    """
    fps = _check_rate("native_fps", native_fps)
    return [int(i) / fps for i in indices]


def snap_to_keyframes(indices: Sequence[int], keyframes: Sequence[int]) -> list[int]:
    """Replace each index by the nearest keyframe index (the earlier one on a tie).

    Decoding a keyframe needs no other frame, so snapped indices decode fast; the price is that
    each frame may be shown up to half a keyframe interval away from the time that was asked for.
    Two targets may snap to the same keyframe; both are kept so the clip length does not change.

    Args:
        indices: target frame indices.
        keyframes: indices of the video's keyframes, increasing, at least one.

    Returns:
        A keyframe index for every target, in the same order.

    Example:
        >>> snap_to_keyframes([0, 29, 31, 59, 100], [0, 60])
        [0, 0, 60, 60, 60]
    """
    keys = [int(k) for k in keyframes]
    if not keys:
        raise ValueError("snap_to_keyframes needs at least one keyframe index")
    if any(b <= a for a, b in zip(keys, keys[1:])):
        raise ValueError(f"keyframes must be strictly increasing, got {keys[:10]}...")
    snapped = []
    for index in indices:
        pos = bisect.bisect_left(keys, index)
        candidates = keys[max(0, pos - 1) : pos + 1]  # the keyframes just before and at/after
        snapped.append(min(candidates, key=lambda k: (abs(k - index), k)))
    return snapped
