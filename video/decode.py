"""Decoding the sampled frames of a video, so that a bad file costs an exception, not a run.

`load_video` asks `video.sampling` which frames to take and a decoder for their pixels. Decoding
runs in a separate worker process (`video.decoder_process`): started once per Python process
(about 0.3 s; it imports PyAV and numpy, not torch), reused for every video, and killed and
replaced after a time-out, a crash, or every `_VIDEOS_PER_WORKER` videos. A native decoder can
hang for ever holding the GIL or crash its process on a bad file (decord does both:
dmlc/decord#269, #373, #375), and that must not take a training run down: here it costs the
caller a `VideoDecodeError` naming the file and the reason. Frames come back over a socket
straight into the output array.

Two decoders (`backend=`), one machinery (the worker, the time-outs, the errors, the sampling):

- "exact", the default: FFmpeg through PyAV, and frames are exact. Frame i is the i-th frame a
  plain sequential decode outputs; the worker checks every frame it returns against the stream's
  timestamp index, falling back to a sequential decode when the two disagree. Frames that no
  other frame references (H.264 non-reference B-frames) are skipped unless sampled, which
  changes no pixel and saves about a fifth of the decoding.
- "decord": what LLaVA-NeXT-Video's own loader returns, for users who need those very pixels
  (to reproduce a model's evaluation, or to feed it the frames it was trained on). The file is
  opened with `decord.VideoReader(path, ctx=cpu(0))`, sampled from decord's frame count and
  average rate with the same `video.sampling` functions, decoded with one `get_batch`, and closed
  (`seek(0)` first, as LLaVA-NeXT does against decord's memory growth, dmlc/decord#208). decord
  identifies frames by counting after a seek and does not check what comes out: on most files
  the two backends agree bit for bit, but on tests/data/box.mp4 decord's `get_batch([227, 340])`
  returns frame 338 for 340, silently. That is kept, on purpose; it is the reason "exact" is the
  default. decord is imported in the worker only when this backend is first used. It is optional
  (wheels for Linux x86-64 only): where it is missing, asking for this backend raises
  `DecordNotInstalled` (an ImportError that says how to get it) before any file is opened.

Frame counts are verified, not trusted, with either backend. Containers list one packet per
frame, but some list packets that never decode (a broken last frame, junk at the end; box.mp4
lists 456 frames and 455 decode). The exact decoder finds out when a sampled frame never comes
out. decord cannot tell: asked for such a frame it returns another frame's pixels or never
returns (#373), so before decord decodes, the exact decoder checks that the last sampled frame
exists (about one keyframe interval of decoding). Either way, `load_video` then samples again
from the frames that do decode, and warns; `num_total_frames` and `duration` describe those.

That tolerance is small on purpose (`missing_frames_allowed`: 2 frames or 2% of the declared
count, whichever is more). An MP4 whose download was cut short still declares the whole video in
its header (frame count and duration) while its packets stop early: sampled as it is, the clip
would cover its first seconds and be captioned as the whole. `load_video` compares the frames
that decode with what the header declares (its frame count, else the stream's duration times the
rate) and raises `VideoDecodeError` naming both counts when more are missing; `allow_partial=True`
samples from what decodes and marks the clip `partial`.

`sampling="keyframe"` trades time accuracy for speed, with either backend: every target frame is
replaced by its nearest keyframe (the backend's own keyframe list); the exact backend decodes
each from its own packet alone (one intra frame instead of half a keyframe interval of frames).
The clip records by how many seconds each frame moved. With decord, keyframe sampling skips the
frame-count check, which would cost more than the keyframes themselves: the frames it can return
are packets marked as keyframes, which the never-decoding packets seen so far were not (a time-out
still guards the rest).

`frame_scale=` (a `video.FrameScale`) has the worker resize every frame for the tower before it
sends it, with the image transform's own resize (`video.frame_scale`): what crosses the socket and
what the caller holds no longer grows with the source's resolution, and only the worker holds a
full-size frame, one at a time (besides its decoder's reference frames). The caller's output array is
the only copy of a clip's frames; it is not reused across clips, since a caller may keep a clip while
decoding the next (a DataLoader prefetching), and at the tower's size it is small anyway.

Shapes: T frames, H/W pixels.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import socket
import subprocess
import sys
import threading

import numpy as np

from video.clip import Backend, Sampling, VideoClip, VideoDecodeError
from video.clip_loading import check_load_arguments, load_clip
from video.decoder_wire import recv_into, recv_message, send_message
from video.decord_decoder import DecordNotInstalled, require_decord
from video.frame_scale import FrameScale, scale_label

__all__ = ["load_video", "shutdown_worker"]

_VIDEOS_PER_WORKER = 200  # a fresh decoder process after this many videos bounds any leak
_PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The child imports only `video.decoder_process` and what it needs (PyAV, numpy): `video/__init__.py`
# imports its public names lazily, so no torch is loaded there. The package root goes first on its
# path, so the child runs this very source tree whatever its working directory.
_LOADER = ("import sys; sys.path.insert(0, sys.argv[1]); "
           "from video.decoder_process import main; main(int(sys.argv[2]))")


class _Timeout(Exception):
    pass


class _OutOfStep(VideoDecodeError):
    """The conversation with the worker cannot go on (bytes still in flight): it must be killed."""


class _BadReply(Exception):
    """The worker sent bytes that are not a message of our protocol (never unpickled: refused)."""


class _Worker:
    """One decoder process and the socket it listens on."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LOADER, str(_PACKAGE_ROOT), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # FFmpeg chatter; failures come back as error messages
        )
        theirs.close()
        self.sock = ours
        self.owner = os.getpid()
        self.videos = 0

    def request(self, message: tuple, timeout: float | None) -> tuple:
        send_message(self.sock, message)
        return self.reply(timeout)

    def reply(self, timeout: float | None) -> tuple:
        self.sock.settimeout(timeout)
        try:
            return recv_message(self.sock)
        except socket.timeout as error:
            raise _Timeout from error
        except ValueError as error:  # not JSON, or an absurd length: the worker is not ours to trust
            raise _BadReply(str(error)) from None

    def recv_frame(self, out: np.ndarray, timeout: float | None) -> None:
        self.sock.settimeout(timeout)
        try:
            recv_into(self.sock, memoryview(out).cast("B"))
        except socket.timeout as error:
            raise _Timeout from error

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.sock.close()

    def close(self) -> None:
        try:
            send_message(self.sock, ("exit",))
            self.process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.sock.close()


_worker: _Worker | None = None
_worker_lock = threading.Lock()  # one request at a time per process; threads take turns


def _get_worker() -> _Worker:
    global _worker
    if _worker is not None:
        if _worker.owner != os.getpid():
            _worker = None  # inherited through fork: that worker belongs to the parent
        elif _worker.process.poll() is not None or _worker.videos >= _VIDEOS_PER_WORKER:
            _worker.close()
            _worker = None
    if _worker is None:
        _worker = _Worker()
    return _worker


def _drop_worker(kill: bool) -> None:
    global _worker
    if _worker is not None and _worker.owner == os.getpid():
        _worker.kill() if kill else _worker.close()
    _worker = None


def shutdown_worker() -> None:
    """Stop this process's decoder process now (it also stops at exit, or when it is next needed)."""
    with _worker_lock:
        _drop_worker(kill=False)


atexit.register(shutdown_worker)


class _Session:
    """Requests about one file; turns every failure into VideoDecodeError for that file."""

    def __init__(self, worker: _Worker, path: str, timeout: float | None, scale: FrameScale | None = None):
        self.worker, self.path, self.timeout, self.scale = worker, path, timeout, scale

    def error(self, reply: tuple) -> VideoDecodeError:
        if reply[0] != "error":
            return _OutOfStep(self.path, f"unexpected reply from the decoder: {reply[0]!r}")
        kind, message = reply[1], reply[2]
        if kind.endswith("InvalidDataError") or kind in ("FileNotFoundError", "IsADirectoryError", "PermissionError"):
            return VideoDecodeError(self.path, f"FFmpeg cannot read it as a video ({kind}: {message})")
        if kind == "DecordError":  # the message already says what decord did
            return VideoDecodeError(self.path, message)
        if kind == "DecordNotInstalled":  # not the file's fault: decord cannot be imported in the worker
            return DecordNotInstalled(message)
        return VideoDecodeError(self.path, f"{kind}: {message}")

    def open(self, backend: Backend) -> dict:
        # The worker outlives the caller's working directory (a chdir after it started), so it gets
        # the absolute path; errors keep the path as the caller spelled it.
        reply = self.worker.request(("open", os.path.abspath(self.path), backend), self.timeout)
        if reply[0] != "meta":
            raise self.error(reply)
        return reply[1]

    def check(self, index: int) -> int | None:
        """None when frame `index` decodes, else the number of frames that do (decord backend)."""
        reply = self.worker.request(("check", index), self.timeout)
        if reply[0] == "done":
            return None
        if reply[0] == "short":
            return reply[1]
        raise self.error(reply)

    def frames(self, indices: list[int],
               keyframes_only: bool) -> tuple[np.ndarray | None, int | None, list[float | None]]:
        """uint8[len(indices), H, W, 3] for increasing, distinct `indices`, None, and each frame's
        presentation time (None where unknown); or None, the number of frames that really decode
        when some index is past it, and []."""
        scale = None if self.scale is None else self.scale.to_wire()
        send_message(self.worker.sock, ("keyframes" if keyframes_only else "frames", indices, scale))
        out, received, times = None, 0, [None] * len(indices)
        while True:
            reply = self.worker.reply(self.timeout)
            if reply[0] == "done" and received == len(indices):
                return out, None, times
            if reply[0] == "short":
                return None, reply[1], []
            if reply[0] != "frame":
                raise self.error(reply)
            k, shape, times[reply[1]] = reply[1], tuple(reply[2]), reply[3]
            if out is None:
                out = np.empty((len(indices), *shape), dtype=np.uint8)  # (T, H, W, 3)
            if shape != out.shape[1:]:  # a stream that changes resolution midway
                raise _OutOfStep(self.path, f"the resolution changes: frame {indices[k]} is {shape[1]}x{shape[0]}, "
                                            f"an earlier one {out.shape[2]}x{out.shape[1]}")
            self.worker.recv_frame(out[k], self.timeout)
            received += 1


def load_video(
    path: str | os.PathLike,
    *,
    num_frames: int = 32,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    sampling: Sampling = "exact",
    timeout: float | None = 60.0,
    backend: Backend = "exact",
    allow_partial: bool = False,
    min_frames: int = 1,
    frame_scale: FrameScale | None = None,
) -> VideoClip:
    """Decode sampled frames of a video file.

    By default `num_frames` frames spread uniformly from the first to the last frame, as
    LLaVA-NeXT-Video (`video.sampling.uniform_indices`). With `fps`, about `fps` frames per second
    of video instead, at most `max_frames` (`video.sampling.fps_indices`). Frames come upright: a
    display rotation stored in the container (phones' portrait videos) is applied.

    Args:
        path: video file (anything FFmpeg reads: mp4, mkv, webm, avi, ...).
        num_frames: frames for uniform sampling; ignored when `fps` is given.
        fps: sample about this many frames per second of video instead of `num_frames`.
        max_frames: with `fps`, the most frames to return (uniform over the window beyond that).
        min_frames: with `fps`, the fewest frames to return (uniform over the window below that).
        start: window start in seconds; None means the beginning.
        end: window end in seconds; None means the end (a later time is clamped to it).
        sampling: "exact" returns exactly the sampled frames; "keyframe" moves each one to its
            nearest keyframe within the window (much faster to decode; see `timestamp_shift`).
        timeout: longest wait, in seconds, for any one step of the decoder (opening the file, each
            frame; with decord, its whole `get_batch`); past it the decoder process is killed. None
            waits for ever.
        backend: "exact" decodes with FFmpeg (PyAV) and checks every frame against the stream's
            timestamps; "decord" returns what decord's `VideoReader.get_batch` returns, as
            LLaVA-NeXT-Video's loader does, wrong frames included (module docstring).
        allow_partial: accept a file that decodes fewer frames than its container declares by
            more than `missing_frames_allowed` (max(2, 2%)): the clip is sampled from the frames
            that decode and marked `partial=True`. By default such a file is an error.
        frame_scale: None returns frames at the source's resolution. A `video.FrameScale` (a
            tower's: `CLIPImageTransform.frame_scale()`) has the decoder process do the image
            transform's resize on each frame before it is sent, so memory and copies stop growing
            with the source's resolution (`video.frame_scale`); recorded as `clip.frame_scale`.

    Returns:
        A `VideoClip` with `frames` uint8[T, H, W, 3] RGB.

    Raises:
        VideoDecodeError: the file is missing, not a video, has no video stream, is corrupt, is
            truncated (fewer frames decode than its header declares, beyond the tolerance; both
            counts in the reason), or the decoder hung or crashed; `.path` and `.reason` say
            which and why.
        ValueError: bad arguments, or a time window outside the video.
        DecordNotInstalled: `backend="decord"` where decord is not installed (an ImportError whose
            message says how to get it: `pip install 'vlm-vision[decord]'` on Linux x86-64).

    Example:
        >>> clip = load_video("tests/data/realshort.mp4", num_frames=8)
        >>> clip.frames.shape, clip.indices
        (torch.Size([8, 240, 320, 3]), [0, 5, 10, 15, 20, 25, 30, 35])
        >>> load_video("tests/data/realshort.mp4", num_frames=8, backend="decord").backend
        'decord'
    """
    check_load_arguments(num_frames, fps, max_frames, sampling, timeout, backend, min_frames)
    if backend == "decord":
        require_decord()  # one clear error, before any file or worker
    if frame_scale is not None and not isinstance(frame_scale, FrameScale):
        raise ValueError(f"frame_scale must be a video.FrameScale or None, got {frame_scale!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "no such file")
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "the file is empty (0 bytes)")
    with _worker_lock:
        worker = _get_worker()
        session = _Session(worker, path, timeout, frame_scale)
        try:
            clip = load_clip(session, num_frames, fps, max_frames, start, end, sampling, backend, allow_partial,
                             min_frames)
        except _Timeout:
            _drop_worker(kill=True)
            raise VideoDecodeError(path, f"the decoder made no progress for {timeout} s and was killed") from None
        except (EOFError, ConnectionError):
            try:
                code = worker.process.wait(timeout=5)  # the socket closes a moment before exit
            except subprocess.TimeoutExpired:
                code = None
            _drop_worker(kill=True)
            raise VideoDecodeError(path, f"the decoder process died (exit status {code})") from None
        except _OutOfStep as error:
            _drop_worker(kill=True)
            raise VideoDecodeError(path, error.reason) from None
        except _BadReply as error:
            _drop_worker(kill=True)
            raise VideoDecodeError(path, f"the decoder process sent a reply outside its protocol, refused "
                                         f"unread ({error})") from None
        except (VideoDecodeError, ValueError, DecordNotInstalled):  # a bad file or window; the worker is in step
            worker.videos += 1
            raise
        except BaseException:  # protocol out of step, KeyboardInterrupt mid-transfer, ...: start afresh
            _drop_worker(kill=True)
            raise
        worker.videos += 1
        clip.frame_scale = scale_label(frame_scale)
        return clip
