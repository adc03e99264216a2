"""How large a decoded frame leaves the decoder process: full resolution, or already at the tower's scale.

A 4K frame is 24.9 MB of RGB, and the tower sees 336 x 336 of it. Sending every sampled frame at
full resolution to the caller, holding it there and only then resizing it made memory and copies
grow with the source's resolution (4K cost 3.8-4.6x the memory of 720p). With a `FrameScale` the
decoder process does the image transform's resize itself, one frame at a time, right after it
decodes it, and sends the small frame: the bytes per frame stop growing with the source.

Which resize: the transform's own, the same code (`video.frame_resize`). CLIP's preprocessing
brings the short side to S (the long side to int(S * long / short), transformers' rule) with
antialiased bicubic, then crops the centre; LLaVA's "pad" mode centres the frame on a square of
the mean colour and brings that to S x S. The decoder process does that resize and leaves the crop
to the transform, which finds its resize already done: on the CPU the tower's pixels are those of
the full-resolution path, bit for bit (tests/video/test_frame_scale.py). For that the decoder
process imports torch, on its first resize (about a second, once per decoder process; it serves
200 videos).

Two cheaper schemes were measured first and missed the bound of 2 grey levels: FFmpeg's area
filter (swscale, in the decoder process, as it converts to RGB) to twice the tower's input, then
the transform, was up to 17 grey levels off on the bundled videos (mean 1.4), since swscale
converts chroma differently when it scales and two filters in a row blur more than one; swscale's
bicubic straight to the final size was 25 levels off on noise (its kernel is not PIL's). PIL's own
resize in the decoder process was within 2 levels, but took twice as long as decoding a 720p frame.

Frames are only ever shrunk: a frame already at or below the size is sent as decoded.

`None` where a `FrameScale` is expected means full resolution: today's frames, bit for bit
(`--full-resolution-frames`).

This module is imported by the decoder process, which imports torch only when it first resizes
(`video.frame_resize.resize_frame`): standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FULL_RESOLUTION", "FrameScale", "pad_offsets", "scale_label", "shortest_edge_size"]

FULL_RESOLUTION = "full"
"""`scale_label(None)`: what token files record for frames decoded at full resolution."""

Mode = Literal["crop", "pad"]


def shortest_edge_size(h: int, w: int, s: int) -> tuple[int, int]:
    """(h', w') with the short side = s and the long side = int(s * long / short), truncated.

    This is transformers' `get_resize_output_image_size` rule: 451x300 at 336 -> 505x336.
    """
    if w <= h:
        return int(s * h / w), s
    return s, int(s * w / h)


def pad_offsets(h: int, w: int) -> tuple[int, int]:
    """(top, left) of an h x w image centred on a max(h, w) square, as LLaVA's `expand2square`."""
    return (w - h) // 2 if w > h else 0, (h - w) // 2 if h > w else 0


@dataclass(frozen=True)
class FrameScale:
    """Frames leave the decoder resized as an image transform of side `size` and `mode` resizes them.

    "crop": short side to `size` (a centre crop follows in the transform); "pad": centred on a
    square of colour `fill` (uint8 RGB), then to `size` x `size`. Build it from the transform:
    `vlm_vision.CLIPImageTransform.frame_scale()`.
    """

    size: int
    mode: Mode = "crop"
    fill: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"FrameScale.size must be a positive int of pixels, got {self.size!r}")
        if self.mode not in ("crop", "pad"):
            raise ValueError(f"FrameScale.mode must be 'crop' or 'pad', got {self.mode!r}")
        if len(self.fill) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in self.fill):
            raise ValueError(f"FrameScale.fill must be 3 ints in 0..255, got {self.fill!r}")

    def shrinks(self, height: int, width: int) -> bool:
        """True when a `height` x `width` frame is larger than the transform's resize makes it."""
        return (min(height, width) if self.mode == "crop" else max(height, width)) > self.size

    def to_wire(self) -> list:
        """[size, mode, fill], as the decoder protocol carries it (`from_wire` reads it back)."""
        return [self.size, self.mode, list(self.fill)]

    @classmethod
    def from_wire(cls, value: list | None) -> FrameScale | None:
        """The `FrameScale` of a `to_wire` value; None (full resolution) for None."""
        return None if value is None else cls(int(value[0]), value[1], tuple(int(c) for c in value[2]))


def scale_label(scale: FrameScale | None) -> str:
    """What a token file records: "full", or e.g. "crop:336" (frames left the decoder resized for a
    336-pixel centre crop) or "pad:336"."""
    return FULL_RESOLUTION if scale is None else f"{scale.mode}:{scale.size}"
