"""The image transform's resize on uint8 frames, shared by `vlm_vision.model.transforms` (its resize step) and
the decoder process (which, given a `video.FrameScale`, does that step itself before it sends a frame).

One implementation for both, so the frames the decoder process resizes are the very pixels the
transform would have made of the full-resolution frame: a `FrameScale` changes where the resize
runs, not what it computes (tests/video/test_frame_scale.py).

Shapes: t frames, H/W pixels before, h/w after, M the side of a padded square.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from video.frame_scale import FrameScale, pad_offsets, shortest_edge_size

__all__ = ["pad_to_square", "resize_frame", "resize_uint8"]


def resize_uint8(frames: torch.Tensor, size: tuple[int, int], *, via_float: bool | None = None) -> torch.Tensor:
    """Antialiased bicubic resize of uint8[t, 3, H, W] -> uint8[t, 3, h, w], PIL's arithmetic.

    Two implementations, chosen by `via_float` (default: by device and direction):
      - uint8 kernel (CPU, shrinking): PyTorch's own PIL-style fixed-point filter, vectorised for
        channels-last; at most one grey level from PIL, and ~15x faster than float on the CPU.
      - float, one axis at a time (GPUs, which have no uint8 kernel, and CPU enlargement): width
        first, then height, each result rounded and clamped to 0..255 as PIL does between its two
        passes. Closer to PIL than the uint8 kernel, whose 16-bit weights, when enlarging, can
        leave a pixel two grey levels off.
    """
    h, w = frames.shape[-2:]
    new_h, new_w = size
    if (h, w) == (new_h, new_w):
        return frames
    if via_float is None:
        via_float = frames.device.type != "cpu" or new_h > h or new_w > w
    if not via_float:
        x = frames.contiguous(memory_format=torch.channels_last)  # (t, 3, H, W), HWC in memory
        return F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True)  # (t, 3, h, w)
    x = frames.float()
    if new_w != w:
        x = F.interpolate(x, size=(h, new_w), mode="bicubic", antialias=True).round_().clamp_(0, 255)  # (t, 3, H, w)
    if new_h != h:
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True).round_().clamp_(0, 255)  # (t, 3, h, w)
    return x.to(torch.uint8)


def pad_to_square(frames: torch.Tensor, fill: tuple[int, int, int]) -> torch.Tensor:
    """uint8[t, 3, H, W] -> uint8[t, 3, M, M], M = max(H, W), the image centred on `fill`."""
    t, _, h, w = frames.shape
    if h == w:
        return frames
    m = max(h, w)
    canvas = torch.empty((t, m, m, 3), dtype=torch.uint8, device=frames.device).permute(0, 3, 1, 2)  # (t, 3, M, M)
    canvas[:] = torch.tensor(fill, dtype=torch.uint8, device=frames.device).view(1, 3, 1, 1)  # (1, 3, 1, 1) fill
    top, left = pad_offsets(h, w)
    canvas[:, :, top:top + h, left:left + w] = frames
    return canvas


def resize_frame(frame: np.ndarray, scale: FrameScale) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[h, w, 3], the transform's resize ("crop": short side to `scale.size`;
    "pad": centred on a `scale.fill` square, then `size` x `size`); the frame itself when that would
    not shrink it (`FrameScale.shrinks`)."""
    h, w = frame.shape[:2]
    if not scale.shrinks(h, w):
        return frame
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]  # (1, 3, H, W), HWC in memory
    if scale.mode == "pad":
        x = pad_to_square(x, scale.fill)  # (1, 3, M, M)
    x = resize_uint8(x, shortest_edge_size(x.shape[-2], x.shape[-1], scale.size))  # (1, 3, h, w)
    return x[0].permute(1, 2, 0).contiguous().numpy()  # (h, w, 3)
