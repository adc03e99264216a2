"""One frame resized for the tower (`video.frame_resize.resize_frame`): sizes by the scale's rule,
never enlarged, padding in the transform's colour; and the tensor steps it shares with the
transforms (`resize_uint8`, `pad_to_square`)."""

from __future__ import annotations

import numpy as np
import torch

from video.frame_resize import pad_to_square, resize_frame, resize_uint8
from video.frame_scale import FrameScale


def test_resize_sizes_and_never_enlarges():
    wide = np.zeros((2160, 3840, 3), np.uint8)
    assert resize_frame(wide, FrameScale(336)).shape == (336, 597, 3)
    assert resize_frame(wide, FrameScale(336, "pad")).shape == (336, 336, 3)
    small = np.zeros((240, 320, 3), np.uint8)
    assert resize_frame(small, FrameScale(336)) is small  # short side 240 <= 336: sent as decoded
    assert resize_frame(small, FrameScale(300, "pad")).shape == (300, 300, 3)  # long side 320 > 300
    assert not FrameScale(336, "pad").shrinks(240, 320)


def test_pad_fills_with_the_transforms_colour():
    frame = np.full((20, 40, 3), 255, np.uint8)
    out = resize_frame(frame, FrameScale(10, "pad", (122, 116, 104)))  # (10, 10, 3): rows 0-1 and 8-9 are fill
    assert out.shape == (10, 10, 3)
    assert (out[0] == (122, 116, 104)).all() and (out[5] == 255).all()


def test_pad_to_square_centres_the_frames_on_the_fill():
    frames = torch.full((2, 3, 2, 4), 7, dtype=torch.uint8)  # (t, 3, H, W), wide
    out = pad_to_square(frames, (1, 2, 3))  # (2, 3, 4, 4): rows 0 and 3 are fill
    assert out.shape == (2, 3, 4, 4)
    assert out[:, :, 1:3].eq(7).all()
    assert out[0, :, 0, 0].tolist() == [1, 2, 3] and out[1, :, 3, 3].tolist() == [1, 2, 3]
    square = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    assert pad_to_square(square, (1, 2, 3)) is square


def test_resize_uint8_kernels_agree_on_a_shrink_and_skip_a_same_size_call():
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (2, 3, 48, 64), dtype=np.uint8))  # (t, 3, H, W)
    assert resize_uint8(frames, (48, 64)) is frames
    fixed = resize_uint8(frames, (24, 32), via_float=False)  # (2, 3, 24, 32)
    floating = resize_uint8(frames, (24, 32), via_float=True)
    assert fixed.shape == floating.shape == (2, 3, 24, 32) and fixed.dtype == floating.dtype == torch.uint8
    assert (fixed.int() - floating.int()).abs().max() <= 2  # PIL's arithmetic, two ways
