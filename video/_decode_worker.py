"""The decoder process behind `video.decode`: FFmpeg (through PyAV) in a process of its own.

A decoder can hang in native code while holding the GIL (decord does: dmlc/decord#269, #373,
#375), kill its process on a bad file, or grow in memory over many files (#208). None of that can
be caught in the process where it happens, so `video.decode` decodes here, in a child process it
can time out, kill and replace.

What "frame i" means: the i-th frame a plain sequential decode of the stream outputs. Frames are
found by seeking, and every decoded frame is identified by its timestamp: frame i is the one whose
pts is the i-th smallest pts among the stream's packets. A decode is trusted only while the
frames that come out after a seek carry consecutive ranks (i, i+1, i+2, ...), which is what a
sequential decode gives. When they do not (a packet that yields no frame, timestamps written in
decode order, a decoder that drops frames after a seek; tests/data/box.mp4 has two of these), the
rest of the request decodes sequentially from the first frame and counts frames instead, which is
the definition itself. A frame listed by the container that never comes out means the container
over-reports its frame count: the reply says how many frames really decode.

Why not decord, which the rest of the stack knew first: its `get_batch` identifies frames by
counting after a seek without checking the decoder's output, and on box.mp4 it returns frame 338
when asked for 340 (and frame 453 for 455, a frame that does not exist), with no error.

This file is loaded by path (`python -c <loader> this_file FD`, which calls `main(FD)`), never
imported as part of the `video` package: it needs only PyAV and numpy, so the process starts in a
fraction of a second without importing torch. It speaks a small protocol over one stream socket,
one request at a time. Messages are length-prefixed pickles (`send_message` / `recv_message`,
also used by the parent); frame pixels follow their header as raw bytes, so the parent receives
them straight into the output array:

    ("open", path)              -> ("meta", {"num_frames", "fps", "keyframes"})
    ("frames", indices)         -> per index, in any order, ("frame", k, shape) + the RGB bytes;
                                   then ("done",), or ("short", n) when only n frames decode
    ("keyframes", indices)      -> the same for keyframe indices, one packet decoded each
    ("exit",)                   -> the process ends

Any request may instead get ("error", kind, message): the exception's class name and message.
"""

from __future__ import annotations

import bisect
import pickle
import socket
import struct
from collections.abc import Iterator

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


class _Short(Exception):
    """Only `count` frames decode, fewer than the container lists."""

    def __init__(self, count: int):
        super().__init__(count)
        self.count = count


class _OutOfStep(Exception):
    """The decoder's output after a seek does not match the timestamp index."""


class Video:
    """One file's video stream and its frame index, built from a pass over its packets."""

    def __init__(self, path: str):
        import av

        self.path = path
        with av.open(path) as container:
            stream = container.streams.best("video")
            if stream is None:
                raise ValueError("the file has no video stream")
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            stamps, key_stamps, has_pts = [], [], True
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # the final empty packet; edit-list cuts
                    continue
                if packet.pts is None:
                    has_pts = False
                stamps.append(packet.pts)
                if packet.is_keyframe:
                    key_stamps.append(packet.pts)
        if not stamps:
            raise ValueError("the video stream has no packets")
        self.num_frames = len(stamps)
        # Without timestamps there is no index to seek by: decode sequentially, keyframes unknown.
        self.pts = sorted(stamps) if has_pts else None
        self.sequential = not has_pts or len(set(stamps)) != len(stamps)
        self.keyframes = [] if self.sequential else sorted({self.rank(p) for p in key_stamps})

    def rank(self, pts: int | None) -> int | None:
        """Frame index of the frame with timestamp `pts`, None if no packet has it."""
        if pts is None or self.pts is None:
            return None
        i = bisect.bisect_left(self.pts, pts)
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def _open_stream(self):
        import av

        container = av.open(self.path)
        stream = container.streams.best("video")
        stream.thread_type = "AUTO"  # frame and slice threads
        return container, stream

    def _decoded(self, container, stream) -> Iterator:
        """Frames in output order; a packet the decoder rejects is skipped, as FFmpeg's CLI does."""
        import av

        codec = stream.codec_context
        for packet in container.demux(stream):
            try:
                yield from codec.decode(packet)  # the final empty packet drains the decoder
            except av.error.InvalidDataError:
                continue

    def exact(self, indices: list[int]) -> Iterator[tuple[int, object]]:
        """Yield (k, frame) for the sorted distinct `indices`, seeking, else sequentially."""
        done: set[int] = set()
        if not self.sequential:
            try:
                yield from self._seeking(indices, done)
                return
            except _OutOfStep:
                self.sequential = True  # for the rest of this file
        yield from self._sequential([i for i in indices if i not in done], indices)

    def _seeking(self, indices: list[int], done: set[int]) -> Iterator[tuple[int, object]]:
        container, stream = self._open_stream()
        with container:
            frames, last = None, None  # decoded-frame iterator and the index it last gave
            for k, target in enumerate(indices):
                key = self.keyframes[bisect.bisect_right(self.keyframes, target) - 1] if self.keyframes else 0
                if frames is None or last is None or not key <= last < target:
                    container.seek(self.pts[key], stream=stream, backward=True)
                    stream.codec_context.flush_buffers()
                    frames, last, expect = self._decoded(container, stream), None, key
                for frame in frames:
                    index = self.rank(frame.pts)
                    if index is not None and index < key and last is None:
                        continue  # leading frames of an open GOP, shown before the keyframe
                    if index != expect:
                        raise _OutOfStep
                    last, expect = index, index + 1
                    if index == target:
                        done.add(target)
                        yield k, frame
                        break
                else:
                    raise _Short(expect)  # the stream ended: frames from `expect` on do not decode

    def _sequential(self, todo: list[int], indices: list[int]) -> Iterator[tuple[int, object]]:
        if not todo:
            return
        position = {index: k for k, index in enumerate(indices)}
        container, stream = self._open_stream()
        with container:
            wanted = iter(todo)
            target, count = next(wanted), 0
            for frame in self._decoded(container, stream):
                if count == target:
                    yield position[target], frame
                    target = next(wanted, None)
                    if target is None:
                        return
                count += 1
        raise _Short(count)

    def keyframe_frames(self, indices: list[int]) -> Iterator[tuple[int, object]]:
        """Yield (k, frame) for keyframe indices, decoding each keyframe's packet alone.

        Seeking to a keyframe and decoding on would decode two to four more frames before the
        keyframe comes out (B-frame reordering and frame threading hold it back); sending its
        packet alone and then draining the decoder costs one intra frame.
        """
        container, stream = self._open_stream()
        stream.thread_type = "SLICE"  # frame threads would only add latency to a lone packet
        codec = stream.codec_context
        with container:
            for k, index in enumerate(indices):
                pts = self.pts[index]
                container.seek(pts, stream=stream, backward=True)
                codec.flush_buffers()
                packet = None
                for candidate in container.demux(stream):  # from the keyframe at or before pts
                    if candidate.pts == pts:
                        packet = candidate
                        break
                    if candidate.pts is not None and candidate.pts > pts and candidate.is_keyframe:
                        break
                if packet is None:
                    raise ValueError(f"seeking to keyframe {index} (pts {pts}) did not find its packet")
                frames = [*codec.decode(packet), *codec.decode(None)]
                codec.flush_buffers()
                if len(frames) != 1 or frames[0].pts != packet.pts:
                    raise ValueError(f"keyframe {index} does not decode on its own ({len(frames)} frames out)")
                yield k, frames[0]


def _send_frames(sock: socket.socket, frames: Iterator[tuple[int, object]]) -> None:
    import numpy as np

    for k, frame in frames:
        # rows of odd widths come padded: make the bytes contiguous before announcing them
        pixels = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
        send_message(sock, ("frame", k, pixels.shape))
        sock.sendall(pixels)


def serve(sock: socket.socket) -> None:
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
                video = Video(request[1])
                meta = {"num_frames": video.num_frames, "fps": video.fps, "keyframes": video.keyframes}
                send_message(sock, ("meta", meta))
            elif op in ("frames", "keyframes"):
                frames = video.exact(request[1]) if op == "frames" else video.keyframe_frames(request[1])
                try:
                    _send_frames(sock, frames)
                except _Short as short:
                    send_message(sock, ("short", short.count))
                else:
                    send_message(sock, ("done",))
            else:
                send_message(sock, ("error", "ValueError", f"unknown request {op!r}"))
        except Exception as error:  # reported to the parent, which raises VideoDecodeError
            message = " ".join((str(error).strip() or type(error).__name__).split())
            send_message(sock, ("error", type(error).__name__, message))


def main(fd: int) -> None:
    """Entry point: serve requests on the stream socket whose file descriptor is `fd`."""
    serve(socket.socket(fileno=fd))
