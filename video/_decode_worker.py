"""The decoder process behind `video.decode`: decord in a process of its own.

decord can hang for ever inside native code while holding the GIL (dmlc/decord#269, #373, #375),
kill the process on a bad file, and grow in memory over many files (#208). None of that can be
caught from Python in the process where it happens, so `video.decode` runs decord here, in a child
process it can time out, kill and replace. Keyframes alone are decoded with PyAV (see
`_decode_keyframes` for why).

This file is loaded by path (`python -c <loader> this_file FD`, which calls `main(FD)`), never
imported as part of the `video` package: it needs only decord and numpy (PyAV for keyframes), so
the process starts in a fraction of a second without importing torch. It speaks a small protocol over one stream socket, one request at a time.
Messages are length-prefixed pickles (`send_message` / `recv_message`, also used by the parent);
frame pixels follow their header as raw bytes, so the parent can receive them straight into the
output array without an intermediate copy:

    ("open", path, num_threads) -> ("meta", {"num_frames", "fps", "keyframes"})
    ("frames", indices)         -> per index ("frame", k, shape) + shape's raw RGB bytes, then
                                   ("done", what FFmpeg logged meanwhile, "" when nothing)
    ("keyframes", indices, fps) -> as "frames", for keyframe indices (one packet decoded each)
    ("count",)                  -> ("count", frames that decode from the last keyframes on)
    ("exit",)                   -> the process ends

Any request may instead get ("error", kind, message), where kind is the exception's class name and
the message ends with what FFmpeg/decord wrote to stderr while serving the request.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import struct
import sys
import tempfile

# Any frame that decord "recovers" by copying a neighbour raises DECORDLimitReachedError: with
# 0 < fault_tol < 1 the limit is fault_tol * num_frames recovered frames, here below one.
_FAULT_TOL = 1e-9
_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+?:\d+: ")


_HEADER = struct.Struct("!Q")


def send_message(sock: socket.socket, message: object) -> None:
    """Send one picklable object, prefixed by its length."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_into(sock: socket.socket, view: memoryview) -> None:
    """Fill `view` from the socket; EOFError if the other side closes first."""
    while view.nbytes:
        received = sock.recv_into(view)
        if not received:
            raise EOFError("the other end of the decoder socket closed")
        view = view[received:]


def recv_message(sock: socket.socket) -> object:
    """Receive one object sent by `send_message`."""
    header = bytearray(_HEADER.size)
    recv_into(sock, memoryview(header))
    data = bytearray(_HEADER.unpack(header)[0])
    recv_into(sock, memoryview(data))
    return pickle.loads(data)


class _Log:
    """fd 2 of this process, sent to a scratch file that is emptied before each request."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        os.dup2(self.file.fileno(), 2)

    def reset(self) -> None:
        os.ftruncate(2, 0)
        os.lseek(2, 0, os.SEEK_SET)

    def tail(self, limit: int = 600) -> str:
        sys.stderr.flush()
        self.file.seek(0)
        text = self.file.read().decode("utf-8", "replace")
        lines = [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines()]
        text = " | ".join(dict.fromkeys(line for line in lines if line))  # unique, in order
        return text[-limit:]


def _open(path: str, num_threads: int):
    import decord

    return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads, fault_tol=_FAULT_TOL)


def _count_decodable(path: str, num_threads: int) -> int:
    """Frames that really decode: from the last keyframe on, read frames one by one until the
    stream ends or decord cannot produce the next one; step back one keyframe while a keyframe
    itself fails. Frames before that keyframe are taken to decode."""
    import decord

    for key in reversed(_open(path, num_threads).get_key_indices()):
        reader = _open(path, num_threads)
        decoded = 0
        try:
            reader.seek_accurate(key)
            while True:
                reader.next()
                decoded += 1
        except StopIteration:
            pass
        except (decord.DECORDError, decord.DECORDLimitReachedError):
            pass  # this frame does not decode: the stream's real end is just before it
        if decoded:
            return key + decoded
    return 0


def _exact_frames(reader, indices: list[int]):
    """Yield (k, RGB frame) for each index: exactly what `VideoReader.get_batch` does per index
    (SeekAccurate to it, then the next frame), one frame at a time so each is sent when ready."""
    for k, index in enumerate(indices):
        reader.seek_accurate(int(index))
        yield k, reader.next().asnumpy()  # (H, W, 3) uint8


def _decode_keyframes(path: str, indices: list[int], times: list[float], fps: float):
    """Yield (k, RGB frame) for each keyframe, decoding that one packet and nothing else.

    decord's seek-to-keyframe decodes two to four more frames before it hands out the keyframe
    (B-frame reordering and frame threading hold it back); sending the keyframe's packet alone and
    then draining the decoder returns it at the cost of one intra frame. PyAV gives that control.
    """
    import av

    with av.open(path) as container:
        stream = container.streams.best("video")  # the stream decord picks too
        codec = stream.codec_context
        start = stream.start_time or 0
        half_frame = max(1, int(0.5 / (fps * stream.time_base)))  # in stream ticks
        for k, (index, seconds) in enumerate(zip(indices, times)):
            pts = start + round(seconds / stream.time_base)
            container.seek(pts + half_frame, stream=stream, backward=True)
            packet = next((p for p in container.demux(stream) if p.is_keyframe and p.pts is not None), None)
            if packet is None or abs(packet.pts - pts) > half_frame:
                found = None if packet is None else float((packet.pts - start) * stream.time_base)
                raise ValueError(f"keyframe {index} at {seconds:.3f} s not found (seek gave {found} s)")
            frames = [*codec.decode(packet), *codec.decode(None)]
            codec.flush_buffers()
            if len(frames) != 1:
                raise ValueError(f"keyframe {index} decoded to {len(frames)} frames")
            yield k, frames[0].to_ndarray(format="rgb24")  # (H, W, 3) uint8


def _send_frames(sock: socket.socket, frames) -> None:
    for k, frame in frames:
        send_message(sock, ("frame", k, frame.shape))
        sock.sendall(frame)


def serve(sock: socket.socket) -> None:
    log = _Log()
    path, threads, reader = None, 0, None
    while True:
        try:
            request = recv_message(sock)
        except (EOFError, ConnectionError):  # the parent went away
            return
        op = request[0]
        log.reset()
        try:
            if op == "exit":
                return
            if op == "open":
                reader = None  # drop the previous file's decoder before opening the next
                path, threads = request[1], request[2]
                reader = _open(path, threads)
                meta = {
                    "num_frames": len(reader),
                    "fps": float(reader.get_avg_fps()),
                    "keyframes": [int(k) for k in reader.get_key_indices()],
                }
                send_message(sock, ("meta", meta))
            elif op == "frames":
                try:
                    _send_frames(sock, _exact_frames(reader, request[1]))
                finally:
                    reader = None
                # Whether FFmpeg logged anything: a clean decode logs nothing, while a packet
                # that yields no frame (the sign of an over-reported frame count) always does.
                send_message(sock, ("done", log.tail()))
            elif op == "keyframes":
                indices = request[1]
                try:  # decord's presentation time of each keyframe, seconds from the stream start
                    times = [float(t) for t in reader.get_frame_timestamp(indices)[:, 0]]
                finally:
                    reader = None
                _send_frames(sock, _decode_keyframes(path, indices, times, request[2]))
                send_message(sock, ("done", log.tail()))
            elif op == "count":
                send_message(sock, ("count", _count_decodable(path, threads)))
            else:
                send_message(sock, ("error", "ValueError", f"unknown request {op!r}"))
        except Exception as error:  # reported to the parent, which raises VideoDecodeError
            message = str(error).strip() or type(error).__name__
            detail = log.tail()
            message = _LOG_PREFIX.sub("", message.splitlines()[0] if message else message)
            send_message(sock, ("error", type(error).__name__, f"{message} [decoder log: {detail}]" if detail else message))


def main(fd: int) -> None:
    """Entry point: serve requests on the stream socket whose file descriptor is `fd`."""
    serve(socket.socket(fileno=fd))
