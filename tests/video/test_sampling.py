"""Frame sampling: hand-computed indices, windows, timestamps, keyframe snapping, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from video import fps_indices, uniform_indices
from video.sampling import indices_to_timestamps, snap_to_keyframes, time_window_to_frames


# uniform ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, n, expected",
    [
        (10, 4, [0, 3, 6, 9]),  # linspace 0, 3, 6, 9
        (100, 5, [0, 24, 49, 74, 99]),  # 0, 24.75, 49.5, 74.25, 99 truncated
        (1800, 3, [0, 899, 1799]),  # 899.5 truncates to 899
        (36, 8, [0, 5, 10, 15, 20, 25, 30, 35]),  # realshort.mp4, 8 frames
        (7, 1, [0]),  # one frame: the first
        (1, 3, [0, 0, 0]),  # a one-frame video still gives 3 indices
        (3, 5, [0, 0, 1, 1, 2]),  # 0, .5, 1, 1.5, 2: fewer frames than asked repeat
        (5, 5, [0, 1, 2, 3, 4]),
    ],
)
def test_uniform_indices_hand_computed(total, n, expected):
    assert uniform_indices(total, n) == expected


def test_uniform_indices_is_llava_next_video_linspace():
    """The reference: np.linspace(0, total - 1, n, dtype=int) (NeXT-Video-v1 video_demo.py)."""
    for total in (1, 2, 17, 280, 456, 1800):
        for n in (1, 4, 8, 32, 300):
            expected = np.linspace(0, total - 1, n, dtype=int).tolist()
            assert uniform_indices(total, n) == expected, (total, n)


def test_uniform_indices_always_has_num_frames_entries():
    for total in range(1, 40):
        got = uniform_indices(total, 16)
        assert len(got) == 16 and got[0] == 0 and got[-1] == total - 1
        assert got == sorted(got)


def test_uniform_indices_window():
    assert uniform_indices(100, 3, start_frame=10, end_frame=21) == [10, 15, 20]
    assert uniform_indices(100, 2, start_frame=90) == [90, 99]
    assert uniform_indices(100, 4, start_frame=50, end_frame=52) == [50, 50, 50, 51]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_total_frames=0, num_frames=4), "num_total_frames must be >= 1, got 0"),
        (dict(num_total_frames=10, num_frames=0), "num_frames must be >= 1, got 0"),
        (dict(num_total_frames=10, num_frames=-3), "num_frames must be >= 1, got -3"),
        (dict(num_total_frames=10, num_frames=2, start_frame=5, end_frame=5), "empty frame window"),
        (dict(num_total_frames=10, num_frames=2, start_frame=10), "empty frame window: start_frame 10 >= end_frame 10"),
        (dict(num_total_frames=10, num_frames=2, end_frame=11), "end_frame 11 is past the end of a 10-frame video"),
        (dict(num_total_frames=10, num_frames=2, start_frame=-1), "start_frame must be >= 0"),
    ],
)
def test_uniform_indices_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        uniform_indices(**kwargs)


@pytest.mark.parametrize("bad", [4.0, "4", None, True])
def test_uniform_indices_bad_types(bad):
    with pytest.raises(TypeError, match="num_frames must be an int"):
        uniform_indices(10, bad)


def test_uniform_indices_accepts_numpy_ints():
    assert uniform_indices(np.int64(10), np.int32(4)) == [0, 3, 6, 9]


# fps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        ((100, 30.0), {}, [0, 30, 60, 90]),  # step round(30 / 1) = 30
        ((100, 29.97), {}, [0, 30, 60, 90]),  # round(29.97) = 30
        ((100, 25.0, 2.0), {}, [0, 12, 24, 36, 48, 60, 72, 84, 96]),  # round(12.5) = 12 (banker's)
        ((10, 30.0, 60.0), {}, list(range(10))),  # more than native fps: every frame
        ((100, 30.0, 2.0, 4), {}, [0, 33, 66, 99]),  # step 15 gives 7 > 4: uniform 4 instead
        ((100, 30.0, 1.0, 4), {}, [0, 30, 60, 90]),  # exactly max_frames: kept
        ((300, 30.0), dict(start_frame=45, end_frame=150), [45, 75, 105, 135]),
        ((300, 30.0, 1.0, 2), dict(start_frame=45, end_frame=150), [45, 149]),
        ((20, 30.0), {}, [0]),  # shorter than a step: the first frame
    ],
)
def test_fps_indices_hand_computed(args, kwargs, expected):
    assert fps_indices(*args, **kwargs) == expected


@pytest.mark.parametrize(
    "args, match",
    [
        ((100, 0.0), "native_fps must be a positive finite number, got 0.0"),
        ((100, float("nan")), "native_fps must be a positive finite number"),
        ((100, 30.0, -1.0), "target_fps must be a positive finite number, got -1.0"),
        ((100, 30.0, 1.0, 0), "max_frames must be >= 1, got 0"),
        ((0, 30.0), "num_total_frames must be >= 1, got 0"),
    ],
)
def test_fps_indices_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        fps_indices(*args)


# windows and timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        ((300, 30.0, 2.0, 4.5), (60, 135)),
        ((300, 30.0, None, None), (0, 300)),
        ((300, 30.0, 9.0, 100.0), (270, 300)),  # end past the video: clamped
        ((300, 30.0, 0.01, None), (1, 300)),  # frame 0 is shown at 0 s < 0.01 s
        ((300, 30.0, 1 / 3, 2 / 3), (10, 20)),  # float times that name a frame exactly
        ((36, 30.02, 0.5, 1.0), (16, 31)),  # ceil(15.01) = 16, ceil(30.02) = 31
    ],
)
def test_time_window_to_frames(args, expected):
    assert time_window_to_frames(*args) == expected


@pytest.mark.parametrize(
    "args, match",
    [
        ((300, 30.0, -1.0, None), "start must be a time >= 0 seconds, got -1.0"),
        ((300, 30.0, 3.0, 2.0), r"end \(2.0 s\) must be after start \(3.0 s\)"),
        ((300, 30.0, 10.0, None), r"start 10.0 s is at or past the end of the video \(10.000 s, 300 frames\)"),
        ((300, 30.0, 0.01, 0.02), "holds no frame at 30.0 fps"),
    ],
)
def test_time_window_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        time_window_to_frames(*args)


def test_timestamps_are_seconds():
    assert indices_to_timestamps([0, 15, 30, 45], 30.0) == [0.0, 0.5, 1.0, 1.5]
    assert indices_to_timestamps([0, 10], 20.0) == [0.0, 0.5]
    with pytest.raises(ValueError, match="native_fps"):
        indices_to_timestamps([0], 0)


# keyframes ---------------------------------------------------------------------------------------


def test_snap_to_keyframes_hand_computed():
    keys = [0, 60, 120]
    assert snap_to_keyframes([0, 29, 30, 31, 59, 61, 119, 130], keys) == [0, 0, 0, 60, 60, 60, 120, 120]
    # 30 is as far from 0 as from 60: the earlier keyframe wins
    assert snap_to_keyframes([90], keys) == [60]
    assert snap_to_keyframes([5, 500], [10]) == [10, 10]
    # duplicates are kept, so the clip keeps its length
    assert snap_to_keyframes([0, 1, 2], [0, 100]) == [0, 0, 0]


def test_snap_to_keyframes_bad_input():
    with pytest.raises(ValueError, match="at least one keyframe"):
        snap_to_keyframes([1], [])
    with pytest.raises(ValueError, match="strictly increasing"):
        snap_to_keyframes([1], [10, 5])
