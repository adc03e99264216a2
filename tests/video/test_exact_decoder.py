"""The exact decoder's seeking path skips the packets of frames nothing references, and only those.

The worker's `Video` is driven directly (it is plain Python and PyAV) so that its `skipped`
statistic can be read; `load_video` on the same file is then compared with a sequential decode.
Frame identity is read back from the pixels (tests/video/synth.py).
"""

from __future__ import annotations

import pathlib

import av
import numpy as np
import pytest

from video import exact_decoder as worker
from video import load_video
from tests.video.synth import make_numbered_video, read_frame_number


@pytest.fixture(scope="module")
def bframes_video(tmp_path_factory):
    # x264's default preset: 3 B-frames with a pyramid, so some B-frames are references and some not
    return make_numbered_video(tmp_path_factory.mktemp("skip") / "b.mp4", 120, gop=30)


def test_the_synthetic_video_has_disposable_b_frames(bframes_video):
    video = worker.Video(str(bframes_video))
    assert not video.sequential
    assert 20 <= len(video.disposable) < 120 - len(video.keyframes)
    assert not set(video.disposable) & set(video.keyframes)


def test_skipped_frames_are_not_missed_and_targets_are_decoded(bframes_video):
    video = worker.Video(str(bframes_video))
    disposable = sorted(video.disposable)
    # disposable targets must still come out; 29 and 59 sit at the end of a GOP, after many skips
    indices = sorted({disposable[0], disposable[5], 29, 44, disposable[-1], 59, 119})
    got = {k: frame.to_ndarray(format="rgb24") for k, frame in video.exact(indices)}
    assert not video.sequential  # no fall-back: the skipping path itself produced these frames
    assert video.skipped > 5
    assert [read_frame_number(got[k]) for k in range(len(indices))] == indices


def test_load_video_equals_sequential_decode_with_skipping(bframes_video):
    with av.open(str(bframes_video)) as container:
        reference = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    clip = load_video(bframes_video, num_frames=11)
    assert len(clip.indices) == 11
    assert set(clip.indices) & worker.Video(str(bframes_video)).disposable  # some targets are disposable
    for frame, index in zip(clip.frames.numpy(), clip.indices):
        np.testing.assert_array_equal(frame, reference[index])


# what the first packet teaches the decoder -------------------------------------------------------


COCKATOO = pathlib.Path(__file__).parents[1] / "data" / "cockatoo.mp4"


@pytest.fixture(scope="module")
def cockatoo_frames() -> list[np.ndarray]:
    """Frames 0..80 of cockatoo.mp4 (x264 4:4:4, keyframes 0, 76, 145), decoded sequentially."""
    with av.open(str(COCKATOO)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 81:
                return frames
    raise AssertionError("cockatoo.mp4 has fewer than 81 frames")


def test_a_seek_past_the_first_packet_gives_the_sequential_pixels(cockatoo_frames):
    # Seeking straight to keyframe 76 used to skip the x264 version SEI in packet 0, and FFmpeg
    # then decoded every later frame differently from a sequential decode.
    clip = load_video(COCKATOO, num_frames=2, start=3.8, end=4.05)
    assert clip.indices == [76, 80]
    for frame, index in zip(clip.frames.numpy(), clip.indices):
        np.testing.assert_array_equal(frame, cockatoo_frames[index])


def test_a_lone_keyframe_past_the_first_packet_gives_the_sequential_pixels(cockatoo_frames):
    video = worker.Video(str(COCKATOO))
    assert 76 in video.keyframes
    [(k, frame)] = list(video.keyframe_frames([76]))
    np.testing.assert_array_equal(frame.to_ndarray(format="rgb24"), cockatoo_frames[76])
