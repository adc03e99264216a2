"""Which frames a clip gets from a file that may not hold what its header declares, and the clip.

`load_clip` asks `video.sampling` for the frame indices (uniform or by rate, in a time window),
moves them to keyframes on request, asks the decoder for them, and builds the `VideoClip`. Frame
counts are verified, not trusted: when a sampled frame does not decode, it samples again from the
frames that do (and warns), and a file that decodes fewer frames than it declares beyond
`missing_frames_allowed` is an error unless `allow_partial` (module docstring of `video.decode`).

The decoder is an argument (`session`: `open(backend)`, `check(index)`, `frames(indices,
keyframes_only)`, `path`), so this module knows nothing of processes and sockets.

Shapes: T frames, U distinct frames, H/W pixels.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch

from video.clip import Backend, Sampling, VideoClip, VideoDecodeError
from video.sampling import (
    fps_indices,
    indices_to_timestamps,
    snap_to_keyframes,
    time_window_to_frames,
    uniform_indices,
)

__all__ = ["check_load_arguments", "load_clip", "missing_frames_allowed", "sample_indices"]


def sample_indices(
    total: int,
    native_fps: float,
    num_frames: int,
    fps: float | None,
    max_frames: int | None,
    start: float | None,
    end: float | None,
    min_frames: int = 1,
) -> tuple[list[int], int, int]:
    """Frame indices to return, and the frame window they were drawn from."""
    first, last = 0, total
    if start is not None or end is not None:
        first, last = time_window_to_frames(total, native_fps, start, end)
    if fps is not None:
        indices = fps_indices(total, native_fps, fps, max_frames, min_frames=min_frames, start_frame=first,
                              end_frame=last)
    else:
        indices = uniform_indices(total, num_frames, start_frame=first, end_frame=last)
    return indices, first, last


def missing_frames_allowed(declared: int) -> int:
    """Frames a file may declare and not decode before it counts as truncated: max(2, 2%).

    Containers that list one or two frames that never decode are common (a broken last packet, an
    edit list cutting one; tests/data/box.mp4). A file that decodes a quarter of what it declares
    is a download cut short, and a clip sampled from it would describe its first seconds only.
    """
    return max(2, math.floor(0.02 * declared))


def _check_complete(path: str, declared: int | None, decodable: int, native_fps: float, allow_partial: bool) -> bool:
    """True when frames are missing beyond the tolerance and `allow_partial` accepts it.

    Raises:
        VideoDecodeError: frames are missing beyond the tolerance and `allow_partial` is False.
    """
    if declared is None or declared - decodable <= missing_frames_allowed(declared):
        return False
    if allow_partial:
        return True
    raise VideoDecodeError(
        path, f"truncated: the container declares {declared} frames ({declared / native_fps:.2f} s) but only "
              f"{decodable} decode ({decodable / native_fps:.2f} s), more than {missing_frames_allowed(declared)} "
              f"missing (an incomplete download?); pass allow_partial=True (--allow-partial) to sample from the "
              f"frames that decode")


def check_load_arguments(num_frames: int, fps: float | None, max_frames: int | None, sampling: str,
                         timeout: float | None, backend: str, min_frames: int = 1) -> None:
    """Raise ValueError, with the value, for an argument of `video.load_video` out of its range."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if fps is not None and (not isinstance(fps, numbers.Real) or not fps > 0):
        raise ValueError(f"fps must be a positive number of frames per second or None, got {fps!r}")
    if (max_frames is not None or min_frames != 1) and fps is None:
        raise ValueError("max_frames bounds fps sampling (so does min_frames); pass fps=..., or num_frames for "
                         "uniform sampling")
    if isinstance(min_frames, bool) or not isinstance(min_frames, numbers.Integral) or min_frames < 1:
        raise ValueError(f"min_frames must be an int >= 1, got {min_frames!r}")
    if sampling not in ("exact", "keyframe"):
        raise ValueError(f"sampling must be 'exact' or 'keyframe', got {sampling!r}")
    if timeout is not None and (not isinstance(timeout, numbers.Real) or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if backend not in ("exact", "decord"):
        raise ValueError(f"backend must be 'exact' or 'decord', got {backend!r}")


def load_clip(session: Any, num_frames: int, fps: float | None, max_frames: int | None, start: float | None,
              end: float | None, sampling: Sampling, backend: Backend, allow_partial: bool,
              min_frames: int = 1) -> VideoClip:
    """Open `session`'s file, sample its frames, decode them and build the clip (see `video.load_video`).

    Raises:
        VideoDecodeError: no usable frame rate, a truncated file, a sampled frame that does not decode.
    """
    meta = session.open(backend)
    total, native_fps, keyframes = meta["num_frames"], meta["fps"], meta["keyframes"]
    declared = meta["declared_frames"]
    if not (math.isfinite(native_fps) and native_fps > 0):
        raise VideoDecodeError(session.path, f"the video stream has no usable frame rate ({native_fps})")
    # Packets missing from a file cut short are known before any decoding.
    partial = _check_complete(session.path, declared, total, native_fps, allow_partial)
    for attempt in range(2):
        targets, first, last = sample_indices(total, native_fps, num_frames, fps, max_frames, start, end, min_frames)
        indices, snapped = targets, False
        if sampling == "keyframe":
            # nearest keyframe inside the window, else the last one before its end
            candidates = [k for k in keyframes if first <= k < last] or [k for k in keyframes if k < last]
            if candidates:  # none when the stream has no timestamps: exact frames instead
                indices, snapped = snap_to_keyframes(targets, candidates), True
        unique = sorted(set(indices))
        decoded, decodable, times = None, None, []
        # Past the frames that decode, decord lies or hangs: check the last one first. A second
        # attempt samples below the count the check returned, so it needs no check.
        if backend == "decord" and not snapped and attempt == 0:
            decodable = session.check(unique[-1])
        if decodable is None:
            decoded, decodable, times = session.frames(unique, keyframes_only=snapped)  # (U, H, W, 3)
        if decoded is not None:
            break
        if attempt or not 0 < decodable < total:
            raise VideoDecodeError(
                session.path, f"the container lists {total} frames but frame {unique[-1]} does not decode "
                              f"({decodable} do)")
        partial = _check_complete(session.path, declared, decodable, native_fps, allow_partial) or partial
        warnings.warn(
            f"{session.path}: the container lists {total} frames but only {decodable} decode; sampling from those",
            stacklevel=3,
        )
        total = decodable
        keyframes = [k for k in keyframes if k < decodable]
    frames = torch.from_numpy(decoded)  # (U, H, W, 3)
    position = {index: k for k, index in enumerate(unique)}
    if unique != indices:
        frames = frames[[position[i] for i in indices]]  # (T, H, W, 3)
    shown = [times[position[i]] for i in indices]
    return VideoClip(
        frames=frames,
        indices=list(indices),
        timestamps=indices_to_timestamps(indices, native_fps),
        native_fps=native_fps,
        num_total_frames=total,
        duration=total / native_fps,
        path=session.path,
        snapped=snapped,
        timestamp_shift=[(i - t) / native_fps for i, t in zip(indices, targets)],
        backend=backend,
        presentation_times=[] if None in shown else shown,
        declared_frames=declared,
        partial=partial,
    )
