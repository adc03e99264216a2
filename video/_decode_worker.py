"""The decoder process behind `video.decode`: FFmpeg (through PyAV), or decord on request, in a
process of its own.

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

Frames nothing is predicted from are not decoded unless asked for. An H.264 picture whose slices
all carry nal_ref_idc 0 (x264's non-reference B-frames: 4 in 10 frames of the benchmark video) is
never a reference, so leaving its packet out changes no other frame's pixels. The index pass
marks such packets (H.264 in AVCC form only, packets holding nothing but those slices, delimiters
and filler), the seeking path does not send them to the decoder unless they are targets, and the
rank check expects them to be missing from the output. A stream that ends right after dropped
frames could hide frames that do not decode, so that case is counted sequentially. The
sequential path decodes every packet.

Why not decord, which the rest of the stack knew first: its `get_batch` identifies frames by
counting after a seek without checking the decoder's output, and on box.mp4 it returns frame 338
when asked for 340 (and frame 453 for 455, a frame that does not exist), with no error.

decord is still here, on request (`DecordVideo`): some users need the very pixels LLaVA-NeXT-Video's
own loader gives, right or wrong. It is imported the first time a file is opened that way, never
before, and it runs in this process for the same reason PyAV does: its hangs and crashes must cost
the parent an error, not its life. Before decord decodes, the exact decoder checks that the last
frame asked for exists (`DecordVideo.check`), because decord asked for a frame past the frames
that really decode returns another frame's pixels or never returns (dmlc/decord#373).

This file is loaded by path (`python -c <loader> this_file FD`, which calls `main(FD)`), never
imported as part of the `video` package: it needs only PyAV and numpy, so the process starts in a
fraction of a second without importing torch. It speaks a small protocol over one stream socket,
one request at a time. Messages are length-prefixed JSON arrays (`send_message` /
`recv_message`, also used by the parent); frame pixels follow their header as raw bytes, so the
parent receives them straight into the output array. Nothing is unpickled on either side: this
process parses untrusted media, and a reply must never be able to make the parent run code. A
reply that is not a JSON array of plain values (a pickle, say) is refused with `ValueError`:

    ("open", path, backend)     -> ("meta", {"num_frames", "fps", "keyframes", "declared_frames"}):
                                   the packets found, and the count the header declares (None
                                   if it declares neither count nor duration); backend is
                                   "exact" (PyAV, `Video`) or "decord" (`DecordVideo`)
    ("frames", indices)         -> per index, in any order, ("frame", k, shape) + the RGB bytes;
                                   then ("done",), or ("short", n) when only n frames decode
    ("keyframes", indices)      -> the same for keyframe indices, one packet decoded each
                                   (decord: both are one `get_batch`, after which the file is closed)
    ("check", index)            -> decord only: ("done",) when frame `index` decodes, else ("short", n)
    ("exit",)                   -> the process ends

Any request may instead get ("error", kind, message): the exception's class name and message.
"""

from __future__ import annotations

import bisect
import json
import os
import socket
import struct
from collections.abc import Iterator

_HEADER = struct.Struct("!Q")

# Frame threads decode ahead of the frame being waited for, and a seek throws that work away. On
# two cores slice threads alone were faster for 32 frames of the benchmark video (3.9 s against
# 4.2 s; 3.0 s against 3.4 s on a one-slice encode). With more cores frame threads are kept: they
# were not measured there, and idle cores make decoding ahead cheap.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_SEEK_THREADS = "SLICE" if _CORES <= 2 else "AUTO"


_MAX_MESSAGE = 1 << 26  # 64 MiB: far above any header or frame-index list; a longer length is garbage


def send_message(sock: socket.socket, message: tuple | list) -> None:
    """Send one message, a tuple of JSON values, prefixed by its length."""
    data = json.dumps(message, allow_nan=True).encode("utf-8")
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_into(sock: socket.socket, view: memoryview) -> None:
    """Fill `view` from the socket; EOFError if the other side closes first."""
    while view.nbytes:
        received = sock.recv_into(view)
        if not received:
            raise EOFError("the other end of the decoder socket closed")
        view = view[received:]


def recv_message(sock: socket.socket) -> tuple:
    """Receive one message sent by `send_message`, as a tuple.

    Raises:
        ValueError: the bytes are not a length-prefixed JSON array (e.g. a pickle), or the length
            is implausible; the conversation cannot go on.
    """
    header = bytearray(_HEADER.size)
    recv_into(sock, memoryview(header))
    size = _HEADER.unpack(header)[0]
    if size > _MAX_MESSAGE:
        raise ValueError(f"decoder message of {size} bytes announced, more than {_MAX_MESSAGE}: not our protocol")
    data = bytearray(size)
    recv_into(sock, memoryview(data))
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"decoder message is not JSON ({error}); first bytes {bytes(data[:16])!r}") from None
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise ValueError(f"decoder message is not a list starting with its kind: {str(message)[:80]}")
    return tuple(message)


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
            length_size = _avcc_length_size(stream.codec_context)
            stamps, key_stamps, disposable_stamps, has_pts = [], [], [], True
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # the final empty packet; edit-list cuts
                    continue
                if packet.pts is None:
                    has_pts = False
                stamps.append(packet.pts)
                if packet.is_keyframe:
                    key_stamps.append(packet.pts)
                elif length_size and _is_disposable(memoryview(packet), length_size):
                    disposable_stamps.append(packet.pts)
            time_base = stream.time_base
            self.declared_frames = _declared_frames(stream, self.fps)
        if not stamps:
            raise ValueError("the video stream has no packets")
        self.num_frames = len(stamps)
        # Without timestamps there is no index to seek by: decode sequentially, keyframes unknown.
        self.pts = sorted(stamps) if has_pts else None
        self.time_base = time_base
        self.sequential = not has_pts or len(set(stamps)) != len(stamps)
        self.keyframes = [] if self.sequential else sorted({self.rank(p) for p in key_stamps})
        # frames no other frame is decoded from: a seek skips their packets unless they are asked for
        self.disposable = set() if self.sequential else {self.rank(p) for p in disposable_stamps}
        self.skipped = 0  # packets the seeking path did not send to the decoder (a statistic)

    def presentation_times(self, indices: list[int]) -> list[float | None]:
        """Seconds at which frames `indices` are shown, from the first frame's time (None: unknown)."""
        if not self.pts or not self.time_base:
            return [None] * len(indices)
        return [float((self.pts[i] - self.pts[0]) * self.time_base) for i in indices]

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

    def _primed_stream(self, thread_type: str):
        """`_open_stream` with `thread_type`, after the decoder has seen the stream's first packet.

        Decoders keep facts from the first packet that change how later frames decode: FFmpeg's
        H.264 decoder reads the x264 version from the SEI there and works around old x264 bugs
        by it. A decode that seeks past that packet gives other pixels (99% of them differ from
        frame 76 on in tests/data/cockatoo.mp4, x264 4:4:4). Decoding it first costs one frame.
        """
        import av

        container, stream = self._open_stream()
        stream.thread_type = thread_type  # before the decoder opens
        codec = stream.codec_context
        for packet in container.demux(stream):
            if packet.size:
                try:
                    codec.decode(packet)
                    codec.decode(None)
                except av.error.InvalidDataError:
                    pass  # a first packet that does not decode leaves nothing to learn from
                break
        codec.flush_buffers()
        return container, stream

    def _decoded(self, container, stream, wanted: frozenset[int] = frozenset()) -> Iterator:
        """Frames in output order; a packet the decoder rejects is skipped, as FFmpeg's CLI does.

        With `wanted` (the seeking path), the packets of disposable frames not in `wanted` are not
        decoded at all.
        """
        import av

        codec = stream.codec_context
        for packet in container.demux(stream):
            if wanted and not packet.is_discard and self._dropped(self.rank(packet.pts), wanted):
                self.skipped += 1
                continue
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

    def _dropped(self, index: int | None, wanted: frozenset[int]) -> bool:
        return index in self.disposable and index not in wanted

    def _next_shown(self, index: int, wanted: frozenset[int]) -> int:
        """The first frame from `index` on that a seeking decode outputs (dropped frames never are)."""
        while self._dropped(index, wanted):
            index += 1
        return index

    def _seeking(self, indices: list[int], done: set[int]) -> Iterator[tuple[int, object]]:
        wanted = frozenset(indices)
        container, stream = self._primed_stream(thread_type=_SEEK_THREADS)
        with container:
            frames, last = None, None  # decoded-frame iterator and the index it last gave
            for k, target in enumerate(indices):
                key = self.keyframes[bisect.bisect_right(self.keyframes, target) - 1] if self.keyframes else 0
                if frames is None or last is None or not key <= last < target:
                    container.seek(self.pts[key], stream=stream, backward=True)
                    stream.codec_context.flush_buffers()
                    frames, last, expect = self._decoded(container, stream, wanted), None, key
                for frame in frames:
                    index = self.rank(frame.pts)
                    if index is not None and index < key and last is None:
                        continue  # leading frames of an open GOP, shown before the keyframe
                    if index != expect:
                        raise _OutOfStep
                    last, expect = index, self._next_shown(index + 1, wanted)
                    if index == target:
                        done.add(target)
                        yield k, frame
                        break
                else:  # the stream ended: frames from `expect` on do not decode
                    if expect != (key if last is None else last + 1):
                        raise _OutOfStep  # dropped frames before `expect`: only a full decode can count
                    raise _Short(expect)

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
        # frame threads would only add latency to a lone packet
        container, stream = self._primed_stream(thread_type="SLICE")
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


def _declared_frames(stream, fps: float) -> int | None:
    """The frame count the container's header declares for `stream` (a PyAV stream), None if unknown.

    A download cut short still declares the whole video (MP4's sample table) while fewer packets
    follow. Without a count (MKV, WebM) the stream's declared duration times `fps` stands in.
    """
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base and fps:
        return round(float(stream.duration * stream.time_base) * fps)
    return None


def _avcc_length_size(codec) -> int | None:
    """Bytes in the NAL unit length prefix of an H.264 stream stored as AVCC (MP4, MKV), else None."""
    extradata = codec.extradata
    if codec.name != "h264" or not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None  # another codec, or Annex-B start codes: no frame is skipped
    return (extradata[4] & 3) + 1


_DISPOSABLE_NAL_TYPES = (1, 9, 12)  # non-IDR slice, access unit delimiter, filler data


def _is_disposable(data: memoryview, length_size: int) -> bool:
    """True when an AVCC H.264 packet holds one picture that no other picture references.

    Every NAL unit must be a slice with nal_ref_idc 0, a delimiter or filler: a parameter set, an
    SEI or anything unexpected makes the packet one to decode, as does a malformed length.
    """
    position, slices = 0, 0
    while position < len(data):
        start = position + length_size
        if start >= len(data):
            return False
        size = int.from_bytes(data[position:start], "big")
        header = data[start]
        if size == 0 or header & 0xE0 or (header & 0x1F) not in _DISPOSABLE_NAL_TYPES:
            return False  # forbidden bit or nal_ref_idc set, or another kind of unit
        slices += (header & 0x1F) == 1
        position = start + size
    return slices > 0 and position == len(data)


class DecordError(Exception):
    """decord refused the file or failed while decoding it; the message is what decord said."""


DECORD_THREADS = 0  # 0: decord chooses, as in LLaVA-NeXT-Video v1's loader; the pixels do not depend on it


class DecordVideo:
    """One file read the way LLaVA-NeXT-Video reads it: `decord.VideoReader` and one `get_batch`.

    Frame counts, rates and keyframes are decord's own. Its pixels are not checked: returning them
    as decord gives them is the point. What is checked, with the exact decoder, is that the last
    frame asked for exists (`check`).
    """

    def __init__(self, path: str):
        import decord  # first imported here: never for the exact backend

        self.path = path
        self.reader = _decord_call(
            "cannot read it as a video", decord.VideoReader, path, ctx=decord.cpu(0), num_threads=DECORD_THREADS
        )
        self.num_frames = len(self.reader)
        self.fps = float(self.reader.get_avg_fps())
        self.declared_frames = _header_frames(path)  # decord counts the packets it can read
        self.keyframes = [int(k) for k in self.reader.get_key_indices()]
        self._exact: Video | None = None

    def check(self, index: int) -> None:
        """Return when frame `index` decodes; raise _Short(n) when only n frames do.

        "Decodes" as the exact decoder defines it. It decodes from the keyframe before `index`,
        about one keyframe interval, a fraction of what `get_batch` costs; but from the first frame
        on files whose timestamps the exact decoder cannot seek by (box.mp4).
        """
        if self._exact is None:
            self._exact = Video(self.path)
        exact = self._exact
        last = min(index, exact.num_frames - 1)  # decord also counts packets FFmpeg discards (box.mp4)
        for _ in exact.exact([last]):
            pass
        if last < index:
            raise _Short(exact.num_frames)

    def frames(self, indices: list[int]) -> Iterator[tuple[int, object]]:
        """Yield (k, uint8[H, W, 3]) for `indices`, from one `get_batch` call; closes the reader."""
        reader, self.reader = self.reader, None
        if reader is None:
            raise ValueError(f"{self.path}: decord's reader was already used and closed; open the file again")
        try:
            batch = _decord_call("failed in get_batch", reader.get_batch, indices).asnumpy()  # (T, H, W, 3)
        except DecordError as error:
            if "size must exactly match" in str(error):  # decord's batch copy fails on a quarter turn
                raise DecordError("decord's get_batch cannot read a video whose container rotates it a quarter "
                                  "turn (a phone's portrait video), and so neither can LLaVA-NeXT-Video's loader; "
                                  "the exact backend returns its frames upright") from error
            raise
        reader.seek(0)  # decord keeps decoded buffers until a seek (dmlc/decord#208); LLaVA-NeXT does the same
        del reader
        yield from enumerate(batch)


def _header_frames(path: str) -> int | None:
    """`_declared_frames` of the file's best video stream, reading its header only."""
    import av

    with av.open(path) as container:
        stream = container.streams.best("video")
        if stream is None:
            return None
        rate = stream.average_rate or stream.guessed_rate
        return _declared_frames(stream, float(rate) if rate else 0.0)


def _decord_call(what: str, function, *args, **kwargs):
    import decord

    try:
        return function(*args, **kwargs)
    except (RuntimeError, decord.DECORDError) as error:  # decord raises both; the parent gets the reason
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DecordError(f"decord {what} ({type(error).__name__}: {first_line})") from error


def _send_frames(sock: socket.socket, frames: Iterator[tuple[int, object]],
                 times: list[float | None] | None = None) -> None:
    """Send (k, frame) pairs as ("frame", k, shape, seconds) messages, each followed by its pixels.

    `seconds` is `times[k]`, the frame's presentation time; None when unknown (decord's frames).
    """
    import numpy as np

    for k, frame in frames:
        seconds = times[k] if times else None
        if not isinstance(frame, np.ndarray):  # a PyAV frame; decord's come as arrays, already upright
            # Phones store portrait video landscape, with a display rotation (counterclockwise degrees)
            # in the container. Turn the frame upright, as players and decord show it.
            turns = round(getattr(frame, "rotation", 0) / 90) % 4
            frame = frame.to_ndarray(format="rgb24")  # (H, W, 3) as stored
            if turns:
                frame = np.rot90(frame, turns)  # (W, H, 3) for a quarter turn
        # rows of odd widths come padded: make the bytes contiguous before announcing them
        pixels = np.ascontiguousarray(frame)  # (H, W, 3) uint8
        send_message(sock, ("frame", k, pixels.shape, seconds))
        sock.sendall(pixels)


def _answer(sock: socket.socket, video: Video | DecordVideo | None, op: str, argument) -> None:
    """Serve one frames/keyframes/check request about the open file (_Short when frames are missing)."""
    if video is None:
        raise ValueError(f"{op!r} before a file was opened")
    if op == "check":
        if not isinstance(video, DecordVideo):
            raise ValueError("'check' is a request of the decord backend only")
        video.check(argument)
    elif isinstance(video, DecordVideo):  # decord decodes keyframes like any frame
        _send_frames(sock, video.frames(argument))
    else:
        # every frame is matched to the timestamp index, so its time is the index's
        _send_frames(sock, video.exact(argument) if op == "frames" else video.keyframe_frames(argument),
                     video.presentation_times(argument))


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
                video = DecordVideo(request[1]) if request[2] == "decord" else Video(request[1])
                meta = {"num_frames": video.num_frames, "fps": video.fps, "keyframes": video.keyframes,
                        "declared_frames": video.declared_frames}
                send_message(sock, ("meta", meta))
            elif op in ("frames", "keyframes", "check"):
                try:
                    _answer(sock, video, op, request[1])
                except _Short as short:
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
