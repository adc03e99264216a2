"""Telling the LLM when a video's frames were taken: LLaVA-Video's time instruction and per-frame markers.

Two optional ways, both from the clip's `presentation_times` (the container's timestamps, which on
variable-rate phone video differ from `index / fps`):

- **Time instruction** (LLaVA-Video's `add_time_instruction`): one sentence right after the
  `<video>` placeholder, on its own line, before the question. Its wording is the one LLaVA-Video
  was trained and evaluated with, kept exactly, including the missing space before "Please":

      The video lasts for {duration:.2f} seconds, and {T} frames are uniformly sampled from it.
      These frames are located at {t_0:.2f}s,{t_1:.2f}s,....Please answer the following questions
      related to this video.

  (one line in the prompt). LLaVA-Video's training code builds the first user turn as
  `<image>\\n{instruction}\\n{question}`; a prompt written `<video>\\n{question}` gives the same.
  `duration` is the clip's `duration` (frames that decode / average frame rate, as LLaVA-Video's
  `total_frames / avg_fps`); times use Python's `format` with 2 decimals (round half to even on
  the binary value: 0.125 -> "0.12").
- **Time markers**: each frame's tokens are preceded by the text `<t={time:.1f}s>` (0.1 s
  resolution, same rounding), tokenized on its own, as transformers' newer video models
  (Qwen3-VL) put a timestamp before each frame. No released LLaVA checkpoint was trained with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["time_instruction", "time_marker"]


def _check_time(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a time >= 0 seconds, got {value!r}")
    return float(value)


def time_instruction(duration: float, times: Sequence[float]) -> str:
    """LLaVA-Video's sentence giving a clip's duration, frame count and frame times.

    Example:
        >>> time_instruction(2.5, [0.0, 1.25, 2.4])
        'The video lasts for 2.50 seconds, and 3 frames are uniformly sampled from it. These frames are located at 0.00s,1.25s,2.40s.Please answer the following questions related to this video.'
    """
    if not times:
        raise ValueError("time_instruction needs the time of at least one frame")
    located = ",".join(f"{_check_time('frame time', t):.2f}s" for t in times)
    return (f"The video lasts for {_check_time('duration', duration):.2f} seconds, and {len(times)} frames are "
            f"uniformly sampled from it. These frames are located at {located}.Please answer the following "
            f"questions related to this video.")


def time_marker(time: float) -> str:
    """The text before a frame's tokens: `<t=12.5s>` (0.1 s resolution).

    Example:
        >>> time_marker(12.46), time_marker(0)
        ('<t=12.5s>', '<t=0.0s>')
    """
    return f"<t={_check_time('frame time', time):.1f}s>"
