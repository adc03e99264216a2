"""load_video: exact frames, keyframe mode, verified frame counts, and every way a file can be bad.

Exactness is checked two ways: against a plain sequential decode (decord `next()` from frame 0,
and PyAV's decoder), and, on synthetic videos, by reading back the frame number each frame has
painted into its pixels (tests/video/synth.py).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import warnings

import decord
import numpy as np
import pytest
import torch

import video.decode as decode_module
from tests.video.reference import VFR_TIMES, numbers, sequential_decord, sequential_pyav
from tests.video.synth import make_numbered_video
from tests.video.test_decoder_wire import _crafted_reply
from video import VideoDecodeError, load_video


# A variable-rate stream: 20 fps steps with jitter, and a 0.5 s gap from frame 15 on.


# exact frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_exact_frames_are_the_sampled_frames(media, kind):
    clip = load_video(media[kind], num_frames=8)
    assert clip.indices == [0, 12, 25, 38, 50, 63, 76, 89]  # linspace(0, 89, 8) truncated
    assert numbers(clip) == clip.indices
    assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (8, 48, 64, 3)
    reference = sequential_decord(media[kind], 89)
    assert np.array_equal(clip.frames.numpy(), reference[clip.indices])
    pyav = sequential_pyav(media[kind])
    assert np.array_equal(clip.frames.numpy(), np.stack([pyav[i] for i in clip.indices]))


@pytest.mark.parametrize("name, codec, pix_fmt", [
    ("vp9.webm", "libvpx-vp9", "yuv420p"),
    ("vp8.webm", "libvpx", "yuv420p"),
    ("hevc.mp4", "libx265", "yuv420p"),
    ("mjpeg.avi", "mjpeg", "yuvj420p"),
    ("mpeg4.avi", "mpeg4", "yuv420p"),
    ("anim.gif", "gif", "rgb8"),
])
def test_other_codecs_and_containers(tmp_path, name, codec, pix_fmt):
    path = make_numbered_video(tmp_path / name, 40, codec=codec, pix_fmt=pix_fmt)
    stored = sequential_pyav(path)
    for sampling in ("exact", "keyframe"):
        clip = load_video(path, num_frames=6, sampling=sampling)
        assert numbers(clip) == clip.indices, sampling
        assert np.array_equal(clip.frames.numpy(), np.stack([stored[i] for i in clip.indices])), sampling
    assert clip.num_total_frames == 40


def test_clip_metadata(media):
    clip = load_video(media["mp4"], num_frames=4)
    assert clip.indices == [0, 29, 59, 89]
    assert clip.timestamps == pytest.approx([0.0, 29 / 30, 59 / 30, 89 / 30])
    assert clip.native_fps == pytest.approx(30.0)
    assert clip.num_total_frames == 90 and clip.duration == pytest.approx(3.0)
    assert clip.path == os.fspath(media["mp4"]) and not clip.snapped
    assert clip.timestamp_shift == [0.0] * 4


def test_every_frame(media):
    clip = load_video(media["mp4"], num_frames=90)
    assert clip.indices == list(range(90)) and numbers(clip) == clip.indices


def test_fps_sampling(media):
    clip = load_video(media["mp4"], fps=3.0)  # 30 fps video: every 10th frame
    assert clip.indices == list(range(0, 90, 10)) and numbers(clip) == clip.indices
    capped = load_video(media["mp4"], fps=3.0, max_frames=4)  # 9 > 4: uniform 4
    assert capped.indices == [0, 29, 59, 89] and numbers(capped) == capped.indices


def test_time_window(media):
    clip = load_video(media["mp4"], num_frames=4, start=1.0, end=2.0)  # frames 30..59
    assert clip.indices == [30, 39, 49, 59] and numbers(clip) == clip.indices
    assert clip.timestamps[0] == pytest.approx(1.0)
    tail = load_video(media["mp4"], num_frames=3, start=2.5, end=99.0)  # end clamped to the video
    assert tail.indices == [75, 82, 89] and numbers(tail) == tail.indices
    worker = decode_module._worker
    with pytest.raises(ValueError, match="at or past the end of the video"):
        load_video(media["mp4"], start=3.0)
    assert decode_module._worker is worker and worker.process.poll() is None  # a bad window is no crash


def test_short_video_repeats_frames(media):
    clip = load_video(media["short"], num_frames=8)
    assert clip.indices == [0, 0, 1, 1, 2, 2, 3, 4]
    assert numbers(clip) == clip.indices
    assert clip.frames.shape[0] == 8 and torch.equal(clip.frames[0], clip.frames[1])


def test_odd_size_yuv444p(media):
    clip = load_video(media["odd"], num_frames=4)
    assert clip.frames.shape == (4, 241, 321, 3)
    assert numbers(clip) == clip.indices == [0, 3, 7, 11]
    assert np.array_equal(clip.frames.numpy(), sequential_decord(media["odd"], 11)[clip.indices])


def test_variable_frame_rate(media):
    clip = load_video(media["vfr"], num_frames=6)
    assert numbers(clip) == clip.indices == [0, 5, 11, 17, 23, 29]
    # timestamps are the nominal index / average fps, in seconds (LLaVA-NeXT-Video's)
    assert clip.timestamps == pytest.approx([i / clip.native_fps for i in clip.indices])
    # presentation times are the container's: when each frame is really shown
    assert clip.presentation_times == pytest.approx([VFR_TIMES[i] for i in clip.indices], abs=1e-9)
    assert max(abs(a - b) for a, b in zip(clip.presentation_times, clip.timestamps)) > 0.1
    snapped = load_video(media["vfr"], num_frames=3, sampling="keyframe")
    assert snapped.presentation_times == pytest.approx([VFR_TIMES[i] for i in snapped.indices], abs=1e-9)
    # the decord backend has no per-frame times: nominal ones
    assert load_video(media["vfr"], num_frames=6, backend="decord").presentation_times == clip.timestamps


def test_constant_rate_presentation_times_equal_timestamps(data_dir):
    for name in ("cup.mp4", "cockatoo.mp4"):
        clip = load_video(data_dir / name, num_frames=5)
        assert clip.presentation_times == pytest.approx(clip.timestamps, abs=1e-6)


@pytest.mark.parametrize("name, window", [("realshort.mp4", {}), ("cockatoo.mp4", dict(end=3.0)), ("cup.mp4", {})])
def test_real_files_match_sequential_decode(data_dir, name, window):
    path = data_dir / name
    clip = load_video(path, num_frames=6, **window)
    reference = sequential_decord(path, clip.indices[-1])
    assert np.array_equal(clip.frames.numpy(), reference[clip.indices])
    assert clip.frames.shape[1:] == reference.shape[1:]


@pytest.mark.parametrize("rotation, turns", [(-90, 3), (90, 1), (180, 2)])
def test_rotated_videos_come_upright_like_decord(tmp_path, rotation, turns):
    """A phone's portrait video is stored landscape with a display rotation: frames come upright."""
    path = make_numbered_video(tmp_path / f"rot{rotation}.mp4", 12, size=(64, 48), gop=4, rotation=rotation)
    stored = sequential_pyav(path)  # (48, 64, 3) each, as encoded
    for sampling in ("exact", "keyframe"):
        clip = load_video(path, num_frames=4, sampling=sampling)
        upright = np.stack([np.rot90(stored[i], turns) for i in clip.indices])
        assert np.array_equal(clip.frames.numpy(), upright), sampling
        assert clip.frames.shape[1:] == ((64, 48, 3) if turns % 2 else (48, 64, 3))
    if turns % 2:
        # decord's get_batch (LLaVA-NeXT-Video's loader) fails on a quarter turn (and its single-frame
        # reads return a mis-shaped array here): the decord backend says so clearly.
        with pytest.raises(decord.DECORDError, match="size must exactly match"):
            decord.VideoReader(str(path)).get_batch([0, 1])
        with pytest.raises(VideoDecodeError, match="rotates it a quarter turn"):
            load_video(path, num_frames=4, backend="decord")
    else:  # decord turns a half-turned video upright too: the backends agree
        by_decord = load_video(path, num_frames=4, backend="decord")
        assert np.array_equal(by_decord.frames.numpy(), load_video(path, num_frames=4).frames.numpy())


def test_cockatoo_is_yuv444p_720p(data_dir):
    clip = load_video(data_dir / "cockatoo.mp4", num_frames=2)
    assert clip.frames.shape == (2, 720, 1280, 3)
    assert clip.num_total_frames == 280 and clip.native_fps == pytest.approx(20.0)


# over-reported frame counts ----------------------------------------------------------------------


def test_box_mp4_counts_the_frames_a_decoder_outputs(data_dir, box_frames):
    """Real file: 456 packets, and a sequential decode outputs 455 frames: the last packet does
    not decode, and the MP4 edit list marks it as discarded. decord counts 456 and, asked for frame
    455, returns frame 453's pixels without complaint. box.mp4 also stores its timestamps in
    decode order, so frames are found by a sequential decode."""
    path = data_dir / "box.mp4"
    assert len(decord.VideoReader(str(path))) == 456
    reference = box_frames
    assert len(reference) == 455
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip = load_video(path, num_frames=5)
    assert clip.num_total_frames == 455 and clip.indices == [0, 113, 227, 340, 454]
    assert np.array_equal(clip.frames.numpy(), np.stack([reference[i] for i in clip.indices]))


def test_box_mp4_many_frames_match_sequential_decode(data_dir, box_frames):
    """decord's get_batch([227, 340]) returns frame 338 for 340 on this file; we must not."""
    path = data_dir / "box.mp4"
    clip = load_video(path, num_frames=12, start=7.0, end=14.0)
    reference = box_frames
    assert np.array_equal(clip.frames.numpy(), np.stack([reference[i] for i in clip.indices]))
    key = load_video(path, num_frames=4, sampling="keyframe")
    assert key.indices == [0, 250, 250, 250]  # targets 0, 151, 302, 454; keyframes 0 and 250
    assert np.array_equal(key.frames.numpy(), np.stack([reference[i] for i in key.indices]))


def test_honest_files_do_not_warn(media, data_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_video(media["mp4"], num_frames=4)
        load_video(data_dir / "realshort.mp4", num_frames=4)


# keyframe mode -----------------------------------------------------------------------------------


def test_keyframe_mode_returns_keyframes_and_reports_the_shift(media):
    keyframes = decord.VideoReader(str(media["mp4"])).get_key_indices()
    assert keyframes == list(range(0, 90, 10))
    clip = load_video(media["mp4"], num_frames=8, sampling="keyframe")
    targets = [0, 12, 25, 38, 50, 63, 76, 89]
    assert clip.snapped
    assert clip.indices == [0, 10, 20, 40, 50, 60, 80, 80]  # 25 -> 20 (tie: earlier), 89 -> 80 (no later key)
    assert set(clip.indices) <= set(keyframes)
    assert numbers(clip) == clip.indices
    assert clip.timestamp_shift == pytest.approx([(i - t) / 30 for i, t in zip(clip.indices, targets)])
    assert clip.timestamps == pytest.approx([i / 30 for i in clip.indices])
    exact = load_video(media["mp4"], num_frames=90)
    assert torch.equal(clip.frames, exact.frames[clip.indices])


@pytest.mark.parametrize("name", ["realshort.mp4", "cockatoo.mp4", "cup.mp4"])
def test_keyframe_mode_real_files_equal_sequential_decode(data_dir, name):
    path = data_dir / name
    keyframes = decord.VideoReader(str(path)).get_key_indices()
    clip = load_video(path, num_frames=2, end=4.0, sampling="keyframe")  # cockatoo: 0, 79 -> 0, 76
    assert clip.snapped and set(clip.indices) <= set(keyframes)
    assert len(set(clip.indices)) == 2
    reference = sequential_decord(path, max(clip.indices))
    assert np.array_equal(clip.frames.numpy(), reference[clip.indices])


def test_keyframe_mode_stays_in_the_window(media):
    clip = load_video(media["mp4"], num_frames=3, start=1.2, end=2.9, sampling="keyframe")  # frames 36..86
    assert clip.indices == [40, 60, 80] and numbers(clip) == clip.indices


# bad files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("audio", "the file has no video stream"),
        ("text", "FFmpeg cannot read it as a video"),
        ("empty", "the file is empty (0 bytes)"),
        ("truncated", "FFmpeg cannot read it as a video"),
        ("corrupt_head", "FFmpeg cannot read it as a video"),
        ("corrupt_tail", "FFmpeg cannot read it as a video"),
    ],
)
def test_bad_files_raise_video_decode_error(media, name, reason):
    with pytest.raises(VideoDecodeError) as info:
        load_video(media[name], num_frames=4)
    error = info.value
    assert error.path == os.fspath(media[name]) and reason in error.reason
    assert error.path in str(error) and error.reason in str(error)
    load_video(media["short"], num_frames=2)  # the decoder still serves the next file


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(VideoDecodeError, match="no such file") as info:
        load_video(tmp_path / "nope.mp4")
    assert info.value.path == os.fspath(tmp_path / "nope.mp4") and info.value.reason == "no such file"
    with pytest.raises(VideoDecodeError, match="not a regular file"):
        load_video(tmp_path)
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(VideoDecodeError, match=r"empty \(0 bytes\)"):
        load_video(tmp_path / "empty.mp4", backend="decord")


def test_corrupt_data_inside_the_stream_never_crashes(media):
    """Damage inside the coded frames: FFmpeg conceals it, drops the frame or gives up; either way
    the caller gets a clip or VideoDecodeError, never a crash or a hang."""
    for sampling in ("exact", "keyframe"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "only N frames decode" when a frame is dropped
                clip = load_video(media["corrupt_mid"], num_frames=16, sampling=sampling, timeout=30)
            assert clip.frames.shape[0] == 16
        except VideoDecodeError as error:
            assert error.path == os.fspath(media["corrupt_mid"])
    assert numbers(load_video(media["mp4"], num_frames=3)) == [0, 44, 89]


# the decoder process -----------------------------------------------------------------------------


def test_a_hung_decoder_is_killed_and_replaced(media):
    """A stopped worker stands in for decord hanging in native code: the call gives up after
    `timeout` seconds, kills it, and the next call gets a fresh worker."""
    load_video(media["short"], num_frames=1)
    worker = decode_module._worker
    os.kill(worker.process.pid, signal.SIGSTOP)
    with pytest.raises(VideoDecodeError, match="made no progress for 1.0 s and was killed"):
        load_video(media["mp4"], num_frames=4, timeout=1.0)
    assert worker.process.poll() is not None and decode_module._worker is None
    assert numbers(load_video(media["mp4"], num_frames=2)) == [0, 89]
    assert decode_module._worker is not worker


def test_a_decoder_that_dies_mid_request(media):
    load_video(media["short"], num_frames=1)
    worker = decode_module._worker
    os.kill(worker.process.pid, signal.SIGSTOP)
    killer = threading.Timer(0.5, os.kill, (worker.process.pid, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(VideoDecodeError, match=r"decoder process died \(exit status -9\)"):
            load_video(media["mp4"], num_frames=4, timeout=30)
    finally:
        killer.cancel()
    assert numbers(load_video(media["mp4"], num_frames=2)) == [0, 89]


def test_a_dead_worker_is_replaced_before_use(media):
    load_video(media["short"], num_frames=1)
    worker = decode_module._worker
    worker.process.kill()
    worker.process.wait()
    assert numbers(load_video(media["mp4"], num_frames=2)) == [0, 89]
    assert decode_module._worker is not worker


def test_worker_is_recycled_after_many_videos(media, monkeypatch):
    monkeypatch.setattr(decode_module, "_VIDEOS_PER_WORKER", 2)
    decode_module.shutdown_worker()
    pids = []
    for _ in range(5):
        load_video(media["short"], num_frames=1)
        pids.append(decode_module._worker.process.pid)
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_tiny_timeout_is_an_error_not_a_hang(data_dir):
    with pytest.raises(VideoDecodeError, match="made no progress"):
        load_video(data_dir / "cockatoo.mp4", num_frames=32, timeout=1e-4)
    assert load_video(data_dir / "realshort.mp4", num_frames=2).indices == [0, 35]


def test_threads_take_turns(media):
    results = {}

    def run(name, n):
        results[name] = numbers(load_video(media[name], num_frames=n))

    threads = [threading.Thread(target=run, args=(name, 5)) for name in ("mp4", "mkv", "odd")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"mp4": [0, 22, 44, 66, 89], "mkv": [0, 22, 44, 66, 89], "odd": [0, 2, 5, 8, 11]}


def _indices_in_child(path: str) -> list[int]:
    return load_video(path, num_frames=3).indices


def test_forked_processes_get_their_own_worker(media):
    """DataLoader workers are forked: a child must not talk to its parent's decoder process."""
    load_video(media["short"], num_frames=1)
    parent_worker = decode_module._worker
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_indices_in_child, (os.fspath(media["mp4"]),)) == [0, 44, 89]
    assert decode_module._worker is parent_worker and parent_worker.process.poll() is None
    assert load_video(media["mp4"], num_frames=2).indices == [0, 89]


def test_a_worker_sending_a_pickle_is_killed_and_the_call_fails(media, tmp_path, monkeypatch):
    """The same reply from the decoder process itself: VideoDecodeError, the worker is replaced."""
    import socket

    marker = tmp_path / "code-ran"
    load_video(media["short"], num_frames=1)
    worker = decode_module._worker

    def hostile_request(message, timeout):
        """Answer `message` with the crafted reply, read by the worker's own reply()."""
        reader, writer = socket.socketpair()
        writer.sendall(_crafted_reply(marker))
        real, worker.sock = worker.sock, reader
        try:
            return decode_module._Worker.reply(worker, timeout)
        finally:
            worker.sock = real
            writer.close()
            reader.close()

    monkeypatch.setattr(worker, "request", hostile_request)
    with pytest.raises(VideoDecodeError, match="outside its protocol"):
        load_video(media["mp4"], num_frames=2)
    assert not marker.exists()
    assert decode_module._worker is None and worker.process.poll() is not None
    assert numbers(load_video(media["mp4"], num_frames=2)) == [0, 89]


# backend="decord": LLaVA-NeXT-Video's loader inside our worker -----------------------------------


