"""The decoder process converts and resizes frame i in a worker thread while frame i + 1 decodes
(`video.decoder_process.converted_ahead`): same pixels, same order, and frames decoded before an
error still come out before it. The process itself imports only what its backend needs: no torch,
and decord only for backend="decord"."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import video.decode as decode_module
from video import load_video
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


def test_worker_loads_decord_only_for_the_decord_backend(media):
    decode_module.shutdown_worker()
    load_video(media["short"], num_frames=2)
    pid = decode_module._worker.process.pid

    def decord_loaded() -> bool:
        return "libdecord" in pathlib.Path(f"/proc/{pid}/maps").read_text()

    assert not decord_loaded()
    load_video(media["short"], num_frames=2, backend="decord")
    assert decode_module._worker.process.pid == pid and decord_loaded()


def test_worker_does_not_load_torch(media):
    """The decoder process imports only its own modules (`video` loads torch lazily): no torch, a fast start."""
    decode_module.shutdown_worker()
    load_video(media["short"], num_frames=2)
    maps = pathlib.Path(f"/proc/{decode_module._worker.process.pid}/maps").read_text()
    assert "libavcodec" in maps and "libtorch" not in maps
