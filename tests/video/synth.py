"""Synthetic test videos, written with PyAV, whose frame number can be read back from the pixels.

A decoder test needs to know *which* frame it got, not just that it got one. Each frame here
carries its own index as a 16-bit code of black and white 8x8 blocks in its top-left corner
(bit 0 first, row-major), drawn over seeded noise. The code survives lossy H.264 because every
block is far from the threshold, so `read_frame_number` recovers the index from any decoder's
output. Videos are tiny (64x48 by default) so that writing one takes milliseconds.

Also here: the broken inputs the decoder must refuse (audio only, truncated, corrupt) and a
container that lists more video packets than its decoder can turn into frames.
"""

from __future__ import annotations

import fractions
import pathlib
from collections.abc import Sequence

import av
import numpy as np

BLOCK = 8  # side of one code block, in pixels
BITS = 16  # frame numbers up to 65535


def _code_capacity(width: int, height: int) -> int:
    return (width // BLOCK) * (height // BLOCK)


def numbered_frame(index: int, width: int, height: int) -> np.ndarray:
    """The RGB image of frame `index`: uint8[H, W, 3], its number coded in the top-left blocks."""
    if _code_capacity(width, height) < BITS:
        raise ValueError(f"a {width}x{height} frame has room for fewer than {BITS} blocks of {BLOCK}px")
    rng = np.random.default_rng(index)
    image = rng.integers(64, 192, size=(height, width, 3), dtype=np.uint8)  # mid-grey noise
    cols = width // BLOCK
    for bit in range(BITS):
        r, c = divmod(bit, cols)
        value = 255 if (index >> bit) & 1 else 0
        image[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = value
    return image


def read_frame_number(frame: np.ndarray) -> int:
    """Read back the index that `numbered_frame` painted into `frame` (uint8[H, W, 3])."""
    frame = np.asarray(frame)
    height, width = frame.shape[:2]
    cols = width // BLOCK
    index = 0
    for bit in range(BITS):
        r, c = divmod(bit, cols)
        # the block's centre avoids chroma bleeding across block edges
        centre = frame[r * BLOCK + 2 : (r + 1) * BLOCK - 2, c * BLOCK + 2 : (c + 1) * BLOCK - 2]
        if centre.mean() > 128:
            index |= 1 << bit
    return index


def make_numbered_video(
    path: str | pathlib.Path,
    num_frames: int,
    size: tuple[int, int] = (64, 48),
    fps: float = 30.0,
    pix_fmt: str = "yuv420p",
    *,
    codec: str = "libx264",
    gop: int | None = None,
    timestamps: Sequence[float] | None = None,
    crf: int = 18,
    rotation: int = 0,
) -> pathlib.Path:
    """Write a video whose frame i shows the number i.

    Args:
        path: output file; the container follows the suffix (.mp4, .mkv, ...).
        num_frames: frames to write.
        size: (width, height) in pixels. yuv420p needs both even; use yuv444p for odd sizes.
        fps: nominal frame rate.
        pix_fmt: the encoder's pixel format (yuv420p, yuv444p, ...).
        codec: encoder name as PyAV knows it.
        gop: keyframe every `gop` frames, exactly (scene-cut keyframes off); None lets x264 choose.
        timestamps: per-frame presentation times in seconds, for variable frame rate; None gives
            i / fps.
        crf: x264 quality (0 is lossless).
        rotation: display rotation in degrees counterclockwise, stored in the container's display
            matrix as phones do (-90 is a portrait phone video stored landscape); 0 stores none.

    Returns:
        The path written.
    """
    path = pathlib.Path(path)
    width, height = size
    if timestamps is not None and len(timestamps) != num_frames:
        raise ValueError(f"timestamps has {len(timestamps)} entries for {num_frames} frames")
    options: dict[str, str] = {}
    if codec == "libx264":
        options["crf"] = str(crf)
        if gop is not None:
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    with av.open(str(path), "w") as container:
        rate = fractions.Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if gop is not None:
            stream.codec_context.gop_size = gop
        if timestamps is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(numbered_frame(i, width, height), format="rgb24")
            if timestamps is not None:
                frame.pts = round(timestamps[i] * 1000)
                frame.time_base = fractions.Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_audio_only(path: str | pathlib.Path, seconds: float = 0.5, rate: int = 16000) -> pathlib.Path:
    """Write a file with one audio stream (a sine tone) and no video stream."""
    path = pathlib.Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, S)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def append_undecodable_packets(src: str | pathlib.Path, dst: str | pathlib.Path, count: int = 10) -> pathlib.Path:
    """Copy the H.264 MP4 `src` to `dst` with `count` extra video packets that decode to no frame.

    Each extra packet holds only an end-of-sequence NAL unit: the container then lists
    `count` more frames than any decoder produces, the way some real files over-report their
    frame count (dmlc/decord#373). decord's `len()` counts them; asked for one of those frames it
    returns another frame's pixels.
    """
    nal = b"\x00\x00\x00\x01\x0a"  # AVCC length prefix (1) + end-of-sequence NAL header
    with av.open(str(src)) as source, av.open(str(dst), "w") as target:
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        last_pts = last_dts = duration = 0
        for packet in source.demux(stream_in):
            if packet.dts is None:  # the demuxer's final empty packet
                continue
            last_pts, last_dts, duration = max(last_pts, packet.pts), packet.dts, packet.duration
            packet.stream = stream_out
            target.mux(packet)
        for k in range(1, count + 1):
            packet = av.Packet(nal)
            packet.stream = stream_out
            packet.pts, packet.dts, packet.duration = last_pts + k * duration, last_dts + k * duration, duration
            packet.time_base = stream_in.time_base
            target.mux(packet)
    return pathlib.Path(dst)


def truncate_file(src: str | pathlib.Path, dst: str | pathlib.Path, keep: float = 0.5) -> pathlib.Path:
    """Copy the first `keep` fraction of `src`'s bytes to `dst` (a download cut short)."""
    data = pathlib.Path(src).read_bytes()
    dst = pathlib.Path(dst)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def corrupt_file(src: str | pathlib.Path, dst: str | pathlib.Path, start: float = 0.0, length: int = 4096) -> pathlib.Path:
    """Copy `src` to `dst` with `length` bytes from fraction `start` on replaced by seeded noise."""
    data = bytearray(pathlib.Path(src).read_bytes())
    begin = int(len(data) * start)
    noise = np.random.default_rng(0).integers(0, 256, size=length, dtype=np.uint8).tobytes()
    data[begin : begin + length] = noise[: len(data) - begin]
    dst = pathlib.Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def make_video_folder(folder: str | pathlib.Path) -> pathlib.Path:
    """A folder of three small good videos, one of them in a subfolder: a.mp4 (12 frames), b.mkv (9),
    sub/c.mp4 (15, 64x96)."""
    folder = pathlib.Path(folder)
    (folder / "sub").mkdir(parents=True)
    make_numbered_video(folder / "a.mp4", 12)
    make_numbered_video(folder / "b.mkv", 9)
    make_numbered_video(folder / "sub" / "c.mp4", 15, size=(64, 96))
    return folder
