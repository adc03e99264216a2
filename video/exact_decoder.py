"""The exact decoder: FFmpeg through PyAV, every frame identified by its timestamp.

What "frame i" means: the i-th frame a plain sequential decode of the stream outputs. Frames are
found by seeking, and every decoded frame is identified by its timestamp: frame i is the one whose
pts is the i-th smallest pts among the stream's packets. A decode is trusted only while the
frames that come out after a seek carry consecutive ranks (i, i+1, i+2, ...), which is what a
sequential decode gives. When they do not (a packet that yields no frame, timestamps written in
decode order, a decoder that drops frames after a seek; tests/data/box.mp4 has two of these), the
rest of the request decodes sequentially from the first frame and counts frames instead, which is
the definition itself. A frame listed by the container that never comes out means the container
over-reports its frame count: `FewerFrames` says how many frames really decode.

Frames nothing is predicted from are not decoded unless asked for (`video.h264_nal`). The index
pass marks such packets, the seeking path does not send them to the decoder unless they are
targets, and the rank check expects them to be missing from the output. A stream that ends right
after dropped frames could hide frames that do not decode, so that case is counted sequentially.
The sequential path decodes every packet.

Why not decord, which the rest of the stack knew first: its `get_batch` identifies frames by
counting after a seek without checking the decoder's output, and on box.mp4 it returns frame 338
when asked for 340 (and frame 453 for 455, a frame that does not exist), with no error.

Runs in the decoder process (`video.decoder_process`), which never imports torch: PyAV only.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator

import av

from video.h264_nal import avcc_length_size, is_disposable

__all__ = ["DECODE_THREADS", "FewerFrames", "Video", "declared_frames", "header_frames"]

# Frame threads decode ahead of the frame being waited for, and a seek throws that work away. On
# two cores slice threads alone were faster for 32 frames of the benchmark video (3.9 s against
# 4.2 s; 3.0 s against 3.4 s on a one-slice encode). With more cores frame threads are kept: they
# were not measured there, and idle cores make decoding ahead cheap.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_SEEK_THREADS = "SLICE" if _CORES <= 2 else "AUTO"
# A fixed number of decoding threads, not FFmpeg's default of one per core (plus one): with frame
# threads each thread holds a full-size frame being decoded, on top of the reference frames the
# codec keeps (H.264: its decoded picture buffer, up to 16 frames, 4-6 for 4K at the usual levels).
# That is what this process holds at full size while it decodes; the frames it sends are scaled
# (`video.frame_scale`), so it is the only full-size memory of a decode.
DECODE_THREADS = max(1, min(_CORES, 4))
# Options for the probing decoder that opening a file starts (never the decoder we decode with).
_PROBE_WITHOUT_DECODING = {"skip_frame": "all"}


class FewerFrames(Exception):
    """Only `count` frames decode, fewer than the container lists."""

    def __init__(self, count: int):
        super().__init__(count)
        self.count = count


class _OutOfStep(Exception):
    """The decoder's output after a seek does not match the timestamp index."""


class Video:
    """One file's video stream and its frame index, built from a pass over its packets."""

    def __init__(self, path: str):
        self.path = path
        with av.open(path) as container:
            stream = container.streams.best("video")
            if stream is None:
                raise ValueError("the file has no video stream")
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            length_size = avcc_length_size(stream.codec_context)
            stamps, key_stamps, disposable_stamps, has_pts = [], [], [], True
            self.first_packet_pts = None  # of the packet a decode from the start sees first
            for packet in container.demux(stream):
                if packet.size and self.first_packet_pts is None:
                    self.first_packet_pts = packet.pts
                if packet.size == 0 or packet.is_discard:  # the final empty packet; edit-list cuts
                    continue
                if packet.pts is None:
                    has_pts = False
                stamps.append(packet.pts)
                if packet.is_keyframe:
                    key_stamps.append(packet.pts)
                elif length_size and is_disposable(memoryview(packet), length_size):
                    disposable_stamps.append(packet.pts)
            time_base = stream.time_base
            self.declared_frames = declared_frames(stream, self.fps)
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
        """The file opened for decoding: the stream's threads set, its decoder not yet open.

        Opening a file decodes its first frames to learn the stream's parameters (FFmpeg's
        `avformat_find_stream_info`; 80 ms of a 4K open). The index pass has learnt what we need,
        so here that probe decodes nothing (`skip_frame`: its own decoder only, not ours): same
        frames, timestamps and pixels (checked on the bundled videos and 480p-4K clips).
        """
        container = av.open(self.path, options=_PROBE_WITHOUT_DECODING)
        stream = container.streams.best("video")
        stream.thread_type = "AUTO"  # frame and slice threads
        stream.codec_context.thread_count = DECODE_THREADS
        return container, stream

    def _primed_stream(self, thread_type: str, first_pts: int | None = None):
        """`_open_stream` with `thread_type`, after the decoder has seen the stream's first packet.

        Decoders keep facts from the first packet that change how later frames decode: FFmpeg's
        H.264 decoder reads the x264 version from the SEI there and works around old x264 bugs
        by it. A decode that seeks past that packet gives other pixels (99% of them differ from
        frame 76 on in tests/data/cockatoo.mp4, x264 4:4:4). Decoding it first costs one frame
        (140 ms at 4K), saved when the decode will start at that packet anyway (`first_pts`, the
        timestamp the first seek goes to, is the first packet's).
        """
        container, stream = self._open_stream()
        stream.thread_type = thread_type  # before the decoder opens
        if first_pts is not None and first_pts == self.first_packet_pts:
            return container, stream
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
        first_key = self.keyframes[bisect.bisect_right(self.keyframes, indices[0]) - 1] if self.keyframes else 0
        container, stream = self._primed_stream(_SEEK_THREADS, first_pts=self.pts[first_key])
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
                    raise FewerFrames(expect)

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
        raise FewerFrames(count)

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


def declared_frames(stream, fps: float) -> int | None:
    """The frame count the container's header declares for `stream` (a PyAV stream), None if unknown.

    A download cut short still declares the whole video (MP4's sample table) while fewer packets
    follow. Without a count (MKV, WebM) the stream's declared duration times `fps` stands in.
    """
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base and fps:
        return round(float(stream.duration * stream.time_base) * fps)
    return None


def header_frames(path: str) -> int | None:
    """`declared_frames` of the file's best video stream, reading its header only."""
    with av.open(path) as container:
        stream = container.streams.best("video")
        if stream is None:
            return None
        rate = stream.average_rate or stream.guessed_rate
        return declared_frames(stream, float(rate) if rate else 0.0)
