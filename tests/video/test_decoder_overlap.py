"""The decoder process converts and resizes frame i in a worker thread while frame i + 1 decodes
(`video.decoder_process.converted_ahead`): same pixels, same order, and frames decoded before an
error still come out before it."""

from __future__ import annotations

import numpy as np
import pytest

from video.decoder_process import converted_ahead, rgb_pixels
from video.exact_decoder import FewerFrames
from video.frame_scale import FrameScale

SCALE = FrameScale(24)


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (60 + k, 80, 3), dtype=np.uint8) for k in range(n)]  # (H, W, 3)


def test_same_pixels_in_the_same_order_as_one_after_the_other():
    frames = _frames(5)
    out = list(converted_ahead(iter(enumerate(frames)), SCALE))
    assert [k for k, _ in out] == [0, 1, 2, 3, 4]
    for (_, pixels), frame in zip(out, frames):
        assert np.array_equal(pixels, rgb_pixels(frame, SCALE))
        assert min(pixels.shape[:2]) == 24  # resized, short side to the scale's size


def test_frames_before_an_error_come_out_first_then_the_error():
    frames = _frames(3)

    def decode():
        yield from enumerate(frames)
        raise FewerFrames(3)

    got = []
    with pytest.raises(FewerFrames):
        for k, pixels in converted_ahead(decode(), SCALE):
            got.append(k)
    assert got == [0, 1, 2]

