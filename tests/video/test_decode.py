"""load_video: exact frames, keyframe mode, verified frame counts, and every way a file can be bad.

Exactness is checked two ways: against a plain sequential decode (decord `next()` from frame 0,
and PyAV's decoder), and, on synthetic videos, by reading back the frame number each frame has
painted into its pixels (tests/video/synth.py).
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import pickle
import signal
import threading
import warnings

import av
import decord
import numpy as np
import pytest
import torch

import video.decode as decode_module
from video import VideoClip, VideoDecodeError, load_video
from tests.video.synth import (
    append_undecodable_packets,
    corrupt_file,
    make_audio_only,
    make_numbered_video,
    read_frame_number,
    truncate_file,
)


def sequential_decord(path, upto: int) -> np.ndarray:
    """Frames 0..upto of a plain sequential decode with decord `next()`: uint8[upto + 1, H, W, 3]."""
    reader = decord.VideoReader(str(path))
    return np.stack([reader.next().asnumpy() for _ in range(upto + 1)])


def sequential_pyav(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# A variable-rate stream: 20 fps steps with jitter, and a 0.5 s gap from frame 15 on.
VFR_TIMES = [i * 0.05 + (0.5 if i >= 15 else 0.0) + 0.02 * (i % 3) for i in range(30)]


def numbers(clip: VideoClip) -> list[int]:
    return [read_frame_number(frame) for frame in clip.frames.numpy()]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Synthetic videos, 64x48 unless said otherwise (written once for this module)."""
    root = tmp_path_factory.mktemp("videos")
    files = {
        # libx264's default preset uses B-frames, so decode order differs from display order
        "mp4": make_numbered_video(root / "n.mp4", 90, gop=10),
        "mkv": make_numbered_video(root / "n.mkv", 90, gop=10),
        "odd": make_numbered_video(root / "odd.mp4", 12, size=(321, 241), pix_fmt="yuv444p", gop=5),
        "short": make_numbered_video(root / "short.mp4", 5),
        "vfr": make_numbered_video(root / "vfr.mp4", 30, timestamps=VFR_TIMES),
        "audio": make_audio_only(root / "audio.m4a"),
    }
    files["over"] = append_undecodable_packets(files["mp4"], root / "over.mp4", count=7)
    files["over1"] = append_undecodable_packets(files["mp4"], root / "over1.mp4", count=1)
    files["truncated"] = truncate_file(files["mp4"], root / "truncated.mp4", keep=0.5)
    files["corrupt_head"] = corrupt_file(files["mp4"], root / "corrupt_head.mp4", start=0.0, length=64)
    files["corrupt_tail"] = corrupt_file(files["mp4"], root / "corrupt_tail.mp4", start=0.95, length=4096)
    files["corrupt_mid"] = corrupt_file(files["mp4"], root / "corrupt_mid.mp4", start=0.4, length=2000)
    files["text"] = root / "notes.mp4"
    files["text"].write_text("this is not a video\n" * 20)
    files["empty"] = root / "empty.mp4"
    files["empty"].write_bytes(b"")
    return files


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


def test_overreported_synthetic_is_clamped_to_decodable_frames(media):
    """7 phantom frames of 97 are more than the tolerance (2): an error unless partial clips are allowed."""
    assert len(decord.VideoReader(str(media["over"]))) == 97  # the container lists 7 phantom frames
    with pytest.raises(VideoDecodeError, match="declares 97 frames .* but only 90 decode"):
        load_video(media["over"], num_frames=8)
    with pytest.warns(UserWarning, match="lists 97 frames but only 90 decode"):
        clip = load_video(media["over"], num_frames=8, allow_partial=True)
    assert clip.num_total_frames == 90 and clip.declared_frames == 97 and clip.partial
    assert clip.indices == [0, 12, 25, 38, 50, 63, 76, 89]
    assert numbers(clip) == clip.indices


def test_a_container_over_reporting_by_one_frame_still_loads(media):
    with pytest.warns(UserWarning, match="lists 91 frames but only 90 decode"):
        clip = load_video(media["over1"], num_frames=8)
    assert clip.num_total_frames == 90 and clip.declared_frames == 91 and not clip.partial
    assert numbers(clip) == clip.indices == [0, 12, 25, 38, 50, 63, 76, 89]


def test_missing_frames_allowed():
    assert [decode_module.missing_frames_allowed(n) for n in (1, 36, 149, 150, 217, 1000)] == [2, 2, 2, 3, 4, 20]


@pytest.mark.parametrize("keep, decoded", [(0.99, 212), (0.9, 189), (0.5, 94), (0.25, 41)])
@pytest.mark.parametrize("backend", ["exact", "decord"])
def test_a_download_cut_short_is_refused_naming_both_counts(data_dir, tmp_path, keep, decoded, backend):
    """cup.mp4 keeps its header (217 frames, 8.1 s) at the front: cut short, its packets stop early."""
    path = truncate_file(data_dir / "cup.mp4", tmp_path / "cut.mp4", keep=keep)
    with pytest.raises(VideoDecodeError, match=f"declares 217 frames \\(8.10 s\\) but only {decoded} decode"):
        load_video(path, num_frames=8, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the last packet of a cut file may not decode either
        clip = load_video(path, num_frames=8, backend=backend, allow_partial=True)
    assert clip.partial and clip.declared_frames == 217 and clip.num_total_frames in (decoded, decoded - 1)
    assert clip.indices[-1] == clip.num_total_frames - 1


def test_a_cut_that_loses_only_the_last_frames_is_tolerated(data_dir, tmp_path):
    path = truncate_file(data_dir / "cup.mp4", tmp_path / "cut.mp4", keep=0.995)  # 3 of 217 frames lost
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_video(path, num_frames=8)
    assert not clip.partial and clip.declared_frames == 217 and clip.num_total_frames == 214
    complete = load_video(data_dir / "cup.mp4", num_frames=8)
    assert not complete.partial and complete.declared_frames == complete.num_total_frames == 217


@pytest.fixture(scope="module")
def box_frames() -> list[np.ndarray]:
    return sequential_pyav(pathlib.Path(__file__).parents[1] / "data" / "box.mp4")


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


def test_video_decode_error_pickles():
    error = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "no such file")))
    assert (error.path, error.reason) == ("/x.mp4", "no such file")
    assert str(error) == "cannot decode video '/x.mp4': no such file"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_frames=0), "num_frames must be an int >= 1, got 0"),
        (dict(fps=-1.0), "fps must be a positive number"),
        (dict(max_frames=8), "max_frames bounds fps sampling"),
        (dict(sampling="fast"), "sampling must be 'exact' or 'keyframe', got 'fast'"),
        (dict(timeout=0), "timeout must be a positive number of seconds or None"),
    ],
)
def test_bad_arguments(media, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_video(media["mp4"], **kwargs)


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



class _Pwned:
    """Unpickling this runs `pathlib.Path(marker).touch()`: what a hostile worker could send."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path(self.marker).touch, ()


def _crafted_reply(marker: pathlib.Path) -> bytes:
    payload = pickle.dumps(("meta", _Pwned(str(marker))))
    return len(payload).to_bytes(8, "big") + payload  # the length prefix the protocol uses


def test_a_pickled_reply_is_refused_and_never_run(tmp_path):
    """The parent's reader gets a reply crafted to run code when unpickled: it raises, nothing ran."""
    import socket

    from video import decoder_wire as wire

    marker = tmp_path / "code-ran"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(_crafted_reply(marker))
        with pytest.raises(ValueError, match="not JSON"):
            wire.recv_message(ours)
    assert not marker.exists()
    assert not (pathlib.Path.cwd() / "code-ran").exists()


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


def test_worker_messages_are_json():
    """What the worker sends is plain JSON: a frame header reads back as the same values."""
    import socket

    from video import decoder_wire as wire

    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire.send_message(theirs, ("frame", 3, (48, 64, 3), 0.125))
        assert wire.recv_message(ours) == ("frame", 3, [48, 64, 3], 0.125)


# backend="decord": LLaVA-NeXT-Video's loader inside our worker -----------------------------------


def decord_batch(path, indices) -> np.ndarray:
    """What LLaVA-NeXT-Video's loader gets: `VideoReader(path, ctx=cpu(0)).get_batch(indices)`."""
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return reader.get_batch(list(indices)).asnumpy()


def identify(frames: np.ndarray, reference: list[np.ndarray], indices: list[int], reach: int = 20) -> list[int | None]:
    """For each frame, the index of the identical frame of a sequential decode near the one asked for."""
    found = []
    for frame, index in zip(frames, indices):
        near = range(max(0, index - reach), min(len(reference), index + reach + 1))
        found.append(next((j for j in near if np.array_equal(frame, reference[j])), None))
    return found


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


def test_bad_backend(media):
    with pytest.raises(ValueError, match="backend must be 'exact' or 'decord', got 'opencv'"):
        load_video(media["mp4"], backend="opencv")
