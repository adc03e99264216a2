"""backend="decord" (`video.decord_decoder`): LLaVA-NeXT-Video's loader inside our decoder process.

Its frames are decord's `get_batch` frames, wrong ones included (box.mp4), with our sampling, our
frame-count checks and our errors; a hung decord is killed like any decoder.
"""

from __future__ import annotations

import os
import signal
import warnings

import decord
import numpy as np
import pytest
import torch

import video.decode as decode_module
from tests.video.reference import decord_batch, identify, numbers
from tests.video.synth import read_frame_number
from video import VideoDecodeError, load_video


def test_decord_backend_is_llava_next_video_loader(data_dir):
    """The reference recipe, written out: linspace over len(vr), then get_batch."""
    path = data_dir / "realshort.mp4"
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    indices = np.linspace(0, len(reader) - 1, 8, dtype=int)
    expected = reader.get_batch(indices).asnumpy()
    clip = load_video(path, num_frames=8, backend="decord")
    assert clip.backend == "decord" and clip.indices == indices.tolist()
    assert clip.frames.dtype == torch.uint8 and np.array_equal(clip.frames.numpy(), expected)
    assert clip.native_fps == reader.get_avg_fps() and clip.num_total_frames == len(reader) == 36
    assert load_video(path, num_frames=2).backend == "exact"


def test_decord_backend_on_yuv444p_720p(data_dir):
    path = data_dir / "cockatoo.mp4"
    clip = load_video(path, num_frames=4, end=3.0, backend="decord")
    assert clip.indices == [0, 19, 39, 59] and clip.frames.shape == (4, 720, 1280, 3)
    assert np.array_equal(clip.frames.numpy(), decord_batch(path, clip.indices))


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("mp4", dict(num_frames=8)),  # B-frames: decode order differs from display order
        ("mkv", dict(num_frames=8)),
        ("odd", dict(num_frames=4)),  # 321x241 yuv444p
        ("short", dict(num_frames=8)),  # repeated indices, passed to get_batch as they are
        ("vfr", dict(num_frames=6)),
        ("mp4", dict(fps=3.0)),
        ("mp4", dict(num_frames=4, start=1.0, end=2.0)),
    ],
)
def test_decord_backend_equals_get_batch_on_numbered_videos(media, kind, kwargs):
    clip = load_video(media[kind], backend="decord", **kwargs)
    assert clip.indices == load_video(media[kind], **kwargs).indices  # the same sampling as the exact backend
    assert np.array_equal(clip.frames.numpy(), decord_batch(media[kind], clip.indices))
    assert numbers(clip) == clip.indices  # and on these files decord is right


def test_decord_backend_keyframe_sampling(media):
    clip = load_video(media["mp4"], num_frames=8, sampling="keyframe", backend="decord")
    exact = load_video(media["mp4"], num_frames=8, sampling="keyframe")
    assert clip.snapped and clip.indices == exact.indices == [0, 10, 20, 40, 50, 60, 80, 80]
    assert clip.timestamp_shift == exact.timestamp_shift
    assert np.array_equal(clip.frames.numpy(), decord_batch(media["mp4"], clip.indices))
    assert numbers(clip) == clip.indices


def test_decord_backend_resamples_an_overreported_count(media):
    """decord counts the 7 packets that never decode; asked for one of those frames it returns
    another frame's pixels. The backend checks the last index first, then samples from the 90."""
    path = media["over"]
    assert len(decord.VideoReader(str(path))) == 97
    assert read_frame_number(decord_batch(path, [96])[0]) < 90  # frame 96 does not exist
    with pytest.raises(VideoDecodeError, match="declares 97 frames .* but only 90 decode"):
        load_video(path, num_frames=8, backend="decord")  # 7 missing: more than the tolerance
    with pytest.warns(UserWarning, match="lists 97 frames but only 90 decode"):
        clip = load_video(path, num_frames=8, backend="decord", allow_partial=True)
    assert clip.num_total_frames == 90 and clip.duration == pytest.approx(3.0) and clip.partial
    assert clip.indices == [0, 12, 25, 38, 50, 63, 76, 89]
    assert np.array_equal(clip.frames.numpy(), decord_batch(path, clip.indices))
    assert numbers(clip) == clip.indices


def test_box_mp4_the_backends_disagree(data_dir, box_frames):
    """The real file where decord is wrong. Both backends sample [0, 113, 227, 340, 454] from the
    455 frames that decode (decord lists 456, so the decord backend warns). The exact backend
    returns the frames a sequential decode gives; decord's get_batch returns frames 338 and 452 for
    340 and 454, and the decord backend returns them too: that is what LLaVA-NeXT-Video sees."""
    path = data_dir / "box.mp4"
    reference = box_frames
    assert identify(decord_batch(path, [227, 340]), reference, [227, 340]) == [227, 338]
    with pytest.warns(UserWarning, match="lists 456 frames but only 455 decode"):
        ours = load_video(path, num_frames=5, backend="decord")
    exact = load_video(path, num_frames=5)
    assert ours.indices == exact.indices == [0, 113, 227, 340, 454]
    assert ours.num_total_frames == exact.num_total_frames == 455
    assert identify(exact.frames.numpy(), reference, exact.indices) == [0, 113, 227, 340, 454]
    assert np.array_equal(ours.frames.numpy(), decord_batch(path, ours.indices))
    assert identify(ours.frames.numpy(), reference, ours.indices) == [0, 113, 227, 338, 452]


@pytest.mark.parametrize(
    "name, reason",
    [
        ("audio", "decord cannot read it as a video (DECORDError"),
        ("text", "decord cannot read it as a video (RuntimeError: Error reading"),
        ("empty", "the file is empty (0 bytes)"),
        ("truncated", "decord cannot read it as a video (RuntimeError: Error reading"),
        ("corrupt_head", "decord cannot read it as a video (RuntimeError: Error reading"),
        ("corrupt_tail", "decord cannot read it as a video (RuntimeError: Error reading"),
    ],
)
def test_decord_backend_bad_files_raise_video_decode_error(media, name, reason):
    with pytest.raises(VideoDecodeError) as info:
        load_video(media[name], num_frames=4, backend="decord")
    error = info.value
    assert error.path == os.fspath(media[name]) and error.reason.startswith(reason)
    assert error.path in str(error)
    assert numbers(load_video(media["short"], num_frames=2, backend="decord")) == [0, 4]  # the worker goes on


def test_decord_backend_missing_file_and_corrupt_stream(media, tmp_path):
    with pytest.raises(VideoDecodeError, match="no such file"):
        load_video(tmp_path / "nope.mp4", backend="decord")
    try:  # damage inside the coded frames: a clip or an error, never a crash or a hang
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert load_video(media["corrupt_mid"], num_frames=16, backend="decord", timeout=30).frames.shape[0] == 16
    except VideoDecodeError as error:
        assert error.path == os.fspath(media["corrupt_mid"])


def test_decord_backend_hang_and_slow_decode_are_errors(media, data_dir):
    """A stopped worker stands in for decord hanging in native code (dmlc/decord#373)."""
    load_video(media["short"], num_frames=1, backend="decord")
    worker = decode_module._worker
    os.kill(worker.process.pid, signal.SIGSTOP)
    with pytest.raises(VideoDecodeError, match="made no progress for 0.5 s and was killed"):
        load_video(media["mp4"], num_frames=4, timeout=0.5, backend="decord")
    assert worker.process.poll() is not None and decode_module._worker is None
    with pytest.raises(VideoDecodeError, match="made no progress"):  # killed inside decord
        load_video(data_dir / "cockatoo.mp4", num_frames=32, timeout=1e-4, backend="decord")
    assert numbers(load_video(media["mp4"], num_frames=2, backend="decord")) == [0, 89]
