"""Which H.264 packets are disposable (`video.h264_nal`): NAL unit headers read by hand, malformed
length prefixes refused, and the AVCC length size read from a stream's extradata."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from video.h264_nal import avcc_length_size, is_disposable


def _avcc(*units: bytes) -> memoryview:
    return memoryview(b"".join(len(unit).to_bytes(4, "big") + unit for unit in units))


@pytest.mark.parametrize(
    "units, disposable",
    [
        ((b"\x01\x9a\x00", b"\x01\x9a\x01"), True),  # two slices, nal_ref_idc 0
        ((b"\x09\xf0", b"\x01\x9a\x00"), True),  # access unit delimiter + slice
        ((b"\x41\x9a\x00",), False),  # nal_ref_idc 2
        ((b"\x65\x88\x00",), False),  # IDR slice
        ((b"\x06\x05\x00", b"\x01\x9a\x00"), False),  # an SEI rides along: decode it
        ((b"\x68\xee",), False),  # picture parameter set
        ((b"\x09\xf0",), False),  # no slice at all
    ],
)
def test_is_disposable(units, disposable):
    assert is_disposable(_avcc(*units), 4) is disposable


def test_is_disposable_refuses_malformed_lengths():
    data = _avcc(b"\x01\x9a\x00")
    assert not is_disposable(data[:-1], 4)  # the unit runs past the packet
    assert not is_disposable(memoryview(bytes(data) + b"\x00\x00"), 4)  # a cut length prefix
    assert not is_disposable(memoryview(b"\x00\x00\x00\x00\x01"), 4)  # an empty unit


def test_avcc_length_size_from_the_extradata():
    avcc = bytes([1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0])  # version 1; low two bits of byte 4: 3 -> 4-byte lengths
    assert avcc_length_size(SimpleNamespace(name="h264", extradata=avcc)) == 4
    two_bytes = avcc[:4] + bytes([0xFD]) + avcc[5:]  # low bits 1 -> 2-byte lengths
    assert avcc_length_size(SimpleNamespace(name="h264", extradata=two_bytes)) == 2
    assert avcc_length_size(SimpleNamespace(name="hevc", extradata=avcc)) is None  # another codec
    assert avcc_length_size(SimpleNamespace(name="h264", extradata=b"\x00\x00\x00\x01\x67")) is None  # Annex-B
    assert avcc_length_size(SimpleNamespace(name="h264", extradata=avcc[:6])) is None  # too short
    assert avcc_length_size(SimpleNamespace(name="h264", extradata=None)) is None


def test_the_bundled_h264_videos_use_four_byte_lengths(data_dir):
    import av

    for name in ("cup.mp4", "cockatoo.mp4"):
        with av.open(str(data_dir / name)) as container:
            assert avcc_length_size(container.streams.video[0].codec_context) == 4, name
