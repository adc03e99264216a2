"""Which frames a clip gets (`video.clip_loading`): frame counts verified, not trusted (a container
that over-reports, a download cut short, the tolerance), and `load_video`'s arguments checked with
their values in the message."""

from __future__ import annotations

import warnings

import decord
import pytest

from tests.video.reference import numbers
from tests.video.synth import truncate_file
from video import VideoDecodeError, load_video
from video.clip_loading import missing_frames_allowed, sample_indices


def test_overreported_synthetic_is_clamped_to_decodable_frames(media):
    """7 phantom frames of 97 are more than the tolerance (2): an error unless partial clips are allowed."""
    assert len(decord.VideoReader(str(media["over"]))) == 97  # the container lists 7 phantom frames
    with pytest.raises(VideoDecodeError, match="declares 97 frames .* but only 90 decode"):
        load_video(media["over"], num_frames=8)
    with pytest.warns(UserWarning, match="lists 97 frames but only 90 decode"):
        clip = load_video(media["over"], num_frames=8, allow_partial=True)
    assert clip.num_total_frames == 90 and clip.declared_frames == 97 and clip.partial
    assert clip.indices == [0, 12, 25, 38, 50, 63, 76, 89]
    assert numbers(clip) == clip.indices


def test_a_container_over_reporting_by_one_frame_still_loads(media):
    with pytest.warns(UserWarning, match="lists 91 frames but only 90 decode"):
        clip = load_video(media["over1"], num_frames=8)
    assert clip.num_total_frames == 90 and clip.declared_frames == 91 and not clip.partial
    assert numbers(clip) == clip.indices == [0, 12, 25, 38, 50, 63, 76, 89]


def test_missing_frames_allowed():
    assert [missing_frames_allowed(n) for n in (1, 36, 149, 150, 217, 1000)] == [2, 2, 2, 3, 4, 20]


@pytest.mark.parametrize("keep, decoded", [(0.99, 212), (0.9, 189), (0.5, 94), (0.25, 41)])
@pytest.mark.parametrize("backend", ["exact", "decord"])
def test_a_download_cut_short_is_refused_naming_both_counts(data_dir, tmp_path, keep, decoded, backend):
    """cup.mp4 keeps its header (217 frames, 8.1 s) at the front: cut short, its packets stop early."""
    path = truncate_file(data_dir / "cup.mp4", tmp_path / "cut.mp4", keep=keep)
    with pytest.raises(VideoDecodeError, match=f"declares 217 frames \\(8.10 s\\) but only {decoded} decode"):
        load_video(path, num_frames=8, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the last packet of a cut file may not decode either
        clip = load_video(path, num_frames=8, backend=backend, allow_partial=True)
    assert clip.partial and clip.declared_frames == 217 and clip.num_total_frames in (decoded, decoded - 1)
    assert clip.indices[-1] == clip.num_total_frames - 1


def test_a_cut_that_loses_only_the_last_frames_is_tolerated(data_dir, tmp_path):
    path = truncate_file(data_dir / "cup.mp4", tmp_path / "cut.mp4", keep=0.995)  # 3 of 217 frames lost
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_video(path, num_frames=8)
    assert not clip.partial and clip.declared_frames == 217 and clip.num_total_frames == 214
    complete = load_video(data_dir / "cup.mp4", num_frames=8)
    assert not complete.partial and complete.declared_frames == complete.num_total_frames == 217


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_frames=0), "num_frames must be an int >= 1, got 0"),
        (dict(fps=-1.0), "fps must be a positive number"),
        (dict(max_frames=8), "max_frames bounds fps sampling"),
        (dict(sampling="fast"), "sampling must be 'exact' or 'keyframe', got 'fast'"),
        (dict(timeout=0), "timeout must be a positive number of seconds or None"),
    ],
)
def test_bad_arguments(media, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_video(media["mp4"], **kwargs)


def test_bad_backend(media):
    with pytest.raises(ValueError, match="backend must be 'exact' or 'decord', got 'opencv'"):
        load_video(media["mp4"], backend="opencv")


def test_sample_indices_uniform_by_rate_and_in_a_window():
    """A 3 s video at 30 fps: (indices, first frame of the window, the frame past its end)."""
    assert sample_indices(90, 30.0, 4, None, None, None, None) == ([0, 29, 59, 89], 0, 90)
    assert sample_indices(90, 30.0, 4, None, None, 1.0, 2.0) == ([30, 39, 49, 59], 30, 60)
    assert sample_indices(90, 30.0, 1, 3.0, None, None, None)[0] == list(range(0, 90, 10))
    assert sample_indices(90, 30.0, 1, 3.0, 4, None, None)[0] == [0, 29, 59, 89]  # 9 by rate > 4: uniform 4
    assert sample_indices(90, 30.0, 1, 3.0, None, 1.0, 2.0) == ([30, 40, 50], 30, 60)
    assert sample_indices(5, 30.0, 8, None, None, None, None)[0] == [0, 0, 1, 1, 2, 2, 3, 4]  # repeats
