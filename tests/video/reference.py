"""What the decoder tests compare `load_video` with: plain sequential decodes (decord `next()` and
PyAV), decord's own `get_batch` (LLaVA-NeXT-Video's loader), and the frame numbers painted into the
synthetic videos' pixels (tests/video/synth.py).

Shapes: T frames, H/W pixels.
"""

from __future__ import annotations

import pathlib

import av
import decord
import numpy as np

from tests.video.synth import (
    append_undecodable_packets,
    corrupt_file,
    make_audio_only,
    make_numbered_video,
    read_frame_number,
    truncate_file,
)
from video import VideoClip

# A variable-rate stream: 20 fps steps with jitter, and a 0.5 s gap from frame 15 on.
VFR_TIMES = [i * 0.05 + (0.5 if i >= 15 else 0.0) + 0.02 * (i % 3) for i in range(30)]


def sequential_decord(path, upto: int) -> np.ndarray:
    """Frames 0..upto of a plain sequential decode with decord `next()`: uint8[upto + 1, H, W, 3]."""
    reader = decord.VideoReader(str(path))
    return np.stack([reader.next().asnumpy() for _ in range(upto + 1)])


def sequential_pyav(path) -> list[np.ndarray]:
    """Every frame of a plain sequential decode with PyAV, uint8[H, W, 3] each."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def numbers(clip: VideoClip) -> list[int]:
    """The frame number painted into each frame of a clip of a synthetic video."""
    return [read_frame_number(frame) for frame in clip.frames.numpy()]


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


def write_media(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Synthetic videos, 64x48 unless said otherwise, and the broken files the decoder must refuse."""
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
