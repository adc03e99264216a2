"""Which H.264 packets no other frame is predicted from, read from their NAL unit headers.

An H.264 picture whose slices all carry nal_ref_idc 0 (x264's non-reference B-frames: 4 in 10
frames of the benchmark video) is never a reference, so leaving its packet out of a decode changes
no other frame's pixels. Only H.264 in AVCC form (length-prefixed NAL units: MP4, MKV) is parsed;
a packet counts as disposable only when it holds nothing but such slices, delimiters and filler.
Pure functions of bytes (standard library only: the decoder process imports this module).
"""

from __future__ import annotations

__all__ = ["DISPOSABLE_NAL_TYPES", "avcc_length_size", "is_disposable"]


def avcc_length_size(codec) -> int | None:
    """Bytes in the NAL unit length prefix of an H.264 stream stored as AVCC (MP4, MKV), else None."""
    extradata = codec.extradata
    if codec.name != "h264" or not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None  # another codec, or Annex-B start codes: no frame is skipped
    return (extradata[4] & 3) + 1


DISPOSABLE_NAL_TYPES = (1, 9, 12)  # non-IDR slice, access unit delimiter, filler data


def is_disposable(data: memoryview, length_size: int) -> bool:
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
        if size == 0 or header & 0xE0 or (header & 0x1F) not in DISPOSABLE_NAL_TYPES:
            return False  # forbidden bit or nal_ref_idc set, or another kind of unit
        slices += (header & 0x1F) == 1
        position = start + size
    return slices > 0 and position == len(data)
