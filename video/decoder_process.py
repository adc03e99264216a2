"""The decoder process behind `video.decode`: FFmpeg (through PyAV), or decord on request, in a
process of its own.

A decoder can hang in native code while holding the GIL (decord does: dmlc/decord#269, #373,
#375), kill its process on a bad file, or grow in memory over many files (#208). None of that can
be caught in the process where it happens, so `video.decode` decodes here, in a child process it
can time out, kill and replace. The decoders themselves are `video.exact_decoder` (the default)
and `video.decord_decoder`.

`video.decode` starts it with `python -c <loader> PACKAGE_ROOT FD`. This module and the few it
imports (`video.decoder_wire`, `video.exact_decoder`, `video.decord_decoder`, `video.h264_nal`,
`video.frame_scale`) need only PyAV and numpy (torch is loaded on the first request to resize frames,
`video.frame_resize`), and `video/__init__.py` loads its public names (and torch) only on first
use, so the process starts in a fraction of a second. It serves one request at a time on one
stream socket, in the protocol of `video.decoder_wire`:

    ("open", path, backend)     -> ("meta", {"num_frames", "fps", "keyframes", "declared_frames"}):
                                   the packets found, and the count the header declares (None
                                   if it declares neither count nor duration); backend is
                                   "exact" (PyAV, `Video`) or "decord" (`DecordVideo`)
    ("frames", indices, scale)  -> per index, in any order, ("frame", k, shape, seconds) + the RGB
                                   bytes; then ("done",), or ("short", n) when only n frames decode.
                                   `scale` is None (full resolution) or a `FrameScale.to_wire()`:
                                   each frame is then resized here as the image transform would
                                   resize it (`video.frame_scale`)
    ("keyframes", indices, scale) -> the same for keyframe indices, one packet decoded each
                                   (decord: both are one `get_batch`, after which the file is closed)
    ("check", index)            -> decord only: ("done",) when frame `index` decodes, else ("short", n)
    ("exit",)                   -> the process ends

Any request may instead get ("error", kind, message): the exception's class name and message.

Frames to resize are converted to RGB and resized in a worker thread while the next one decodes
(`converted_ahead`), and sent in their order.

Shapes: H/W pixels.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from video.decoder_wire import recv_message, send_message
from video.decord_decoder import DecordVideo
from video.exact_decoder import FewerFrames, Video
from video.frame_scale import FrameScale

__all__ = ["converted_ahead", "main", "serve"]


def _send_frames(sock: socket.socket, frames: Iterator[tuple[int, object]],
                 times: list[float | None] | None = None, scale: FrameScale | None = None) -> None:
    """Send (k, frame) pairs as ("frame", k, shape, seconds) messages, each followed by its pixels.

    `seconds` is `times[k]`, the frame's presentation time; None when unknown (decord's frames).
    With `scale`, each frame is shrunk before it is sent (`rgb_pixels`), in a worker thread
    (`converted_ahead`); full-resolution frames are converted here, one after the other (a thread
    did not make them faster: the parent's copying of 25 MB per 4K frame is the bound there).
    """
    converted = converted_ahead(frames, scale) if scale else ((k, rgb_pixels(f)) for k, f in frames)
    for k, pixels in converted:
        seconds = times[k] if times else None
        send_message(sock, ("frame", k, pixels.shape, seconds))
        sock.sendall(pixels)


def converted_ahead(frames: Iterator[tuple[int, object]], scale: FrameScale) -> Iterator[tuple[int, np.ndarray]]:
    """(k, `rgb_pixels(frame, scale)`) for each (k, frame) of `frames`, in their order.

    The conversion (YUV -> RGB, and the resize) of frame i runs in a worker thread while the
    decoder works on frame i + 1: FFmpeg's decoding and conversion and torch's resize all release
    the GIL, so on two cores they overlap (4K: decoding ~55 ms a frame, converting and resizing
    ~33 ms). One frame converts ahead at most, so at most two decoded frames wait here. Frames
    before a decoding error are still sent, then the error is raised, as without the thread.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert") as pool:
        pending: deque = deque()  # (k, future of the frame's pixels), in decoding order
        try:
            for k, frame in frames:
                pending.append((k, pool.submit(rgb_pixels, frame, scale)))
                if len(pending) > 1:
                    k_done, future = pending.popleft()
                    yield k_done, future.result()
        except Exception:  # FewerFrames, a decoding error: the frames decoded before it go first
            for k_done, future in pending:
                yield k_done, future.result()
            raise
        for k_done, future in pending:
            yield k_done, future.result()


def _resized(frame: np.ndarray, scale: FrameScale) -> np.ndarray:
    """`video.frame_resize.resize_frame` in one torch thread: more were slower (measured: 480p 0.83 s
    against 0.55 s for 32 frames with two), their idle threads spinning while the decoder works."""
    import torch  # lazy: loaded on the first resize only (`video.frame_scale`)

    from video.frame_resize import resize_frame  # lazy: imports torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return resize_frame(frame, scale)


def rgb_pixels(frame: object, scale: FrameScale | None = None) -> np.ndarray:
    """uint8[H, W, 3] RGB, upright and contiguous, of a PyAV frame or of decord's RGB array.

    With `scale`, the frame is resized here as the image transform would resize it
    (`video.frame_resize.resize_frame`): the full-size RGB frame lives only while this function runs.
    """
    if not isinstance(frame, np.ndarray):  # a PyAV frame; decord's come as arrays, already upright
        # Phones store portrait video landscape, with a display rotation (counterclockwise degrees)
        # in the container. Turn the frame upright, as players and decord show it.
        turns = round(getattr(frame, "rotation", 0) / 90) % 4
        frame = frame.to_ndarray(format="rgb24")  # (H, W, 3) as stored
        if turns:
            frame = np.rot90(frame, turns)  # (W, H, 3) for a quarter turn
    if scale is not None and scale.shrinks(*frame.shape[:2]):
        frame = _resized(frame, scale)  # (h, w, 3), the transform's resize
    # rows of odd widths come padded: make the bytes contiguous before announcing them
    return np.ascontiguousarray(frame)  # (H, W, 3) uint8


def _answer(sock: socket.socket, video: Video | DecordVideo | None, op: str, argument,
            scale: FrameScale | None = None) -> None:
    """Serve one frames/keyframes/check request about the open file (FewerFrames when frames are missing)."""
    if video is None:
        raise ValueError(f"{op!r} before a file was opened")
    if op == "check":
        if not isinstance(video, DecordVideo):
            raise ValueError("'check' is a request of the decord backend only")
        video.check(argument)
    elif isinstance(video, DecordVideo):  # decord decodes keyframes like any frame
        _send_frames(sock, video.frames(argument), scale=scale)
    else:
        # every frame is matched to the timestamp index, so its time is the index's
        _send_frames(sock, video.exact(argument) if op == "frames" else video.keyframe_frames(argument),
                     video.presentation_times(argument), scale)


def serve(sock: socket.socket) -> None:
    """Answer requests on `sock` until "exit" or until the parent goes away."""
    # FFmpeg's own log stays off (PyAV's default): forwarding it to Python from the decoder's
    # threads deadlocks on files that log while decoding (box.mp4 did), and stderr is discarded.
    video = None
    while True:
        try:
            request = recv_message(sock)
        except (EOFError, ConnectionError):  # the parent went away
            return
        op = request[0]
        try:
            if op == "exit":
                return
            if op == "open":
                video = None  # drop the previous file first
                video = DecordVideo(request[1]) if request[2] == "decord" else Video(request[1])
                meta = {"num_frames": video.num_frames, "fps": video.fps, "keyframes": video.keyframes,
                        "declared_frames": video.declared_frames}
                send_message(sock, ("meta", meta))
            elif op in ("frames", "keyframes", "check"):
                try:
                    scale = FrameScale.from_wire(request[2]) if len(request) > 2 else None
                    _answer(sock, video, op, request[1], scale)
                except FewerFrames as short:
                    send_message(sock, ("short", short.count))
                else:
                    send_message(sock, ("done",))
                if isinstance(video, DecordVideo) and op != "check":
                    video = None  # decord's reader is closed after its one batch
            else:
                send_message(sock, ("error", "ValueError", f"unknown request {op!r}"))
        except Exception as error:  # reported to the parent, which raises VideoDecodeError
            message = " ".join((str(error).strip() or type(error).__name__).split())
            send_message(sock, ("error", type(error).__name__, message))


def main(fd: int) -> None:
    """Entry point: serve requests on the stream socket whose file descriptor is `fd`."""
    serve(socket.socket(fileno=fd))
