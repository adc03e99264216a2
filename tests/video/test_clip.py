"""`VideoClip` and `VideoDecodeError` (`video.clip`): what a clip's fields default to, and an error
that keeps its file and reason through pickling (out of DataLoader workers)."""

from __future__ import annotations

import pickle

import pytest
import torch

from video.clip import ClipOrigin, VideoClip, VideoDecodeError


def test_video_decode_error_pickles():
    error = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "no such file")))
    assert (error.path, error.reason) == ("/x.mp4", "no such file")
    assert str(error) == "cannot decode video '/x.mp4': no such file"


def test_a_clip_defaults_to_no_shift_and_its_own_timestamps_as_presentation_times():
    frames = torch.zeros(3, 4, 4, 3, dtype=torch.uint8)  # (T, H, W, 3)
    clip = VideoClip(frames=frames, indices=[0, 15, 30], timestamps=[0.0, 0.5, 1.0], native_fps=30.0,
                     num_total_frames=31, duration=31 / 30, path=None)
    assert clip.timestamp_shift == [0.0, 0.0, 0.0]
    assert clip.presentation_times == [0.0, 0.5, 1.0] and clip.presentation_times is not clip.timestamps
    assert (clip.backend, clip.partial, clip.frame_scale, clip.snapped) == ("exact", False, "full", False)
    kept = VideoClip(frames=frames, indices=[0, 15, 30], timestamps=[0.0, 0.5, 1.0], native_fps=30.0,
                     num_total_frames=31, duration=31 / 30, path="v.mp4", timestamp_shift=[0.1, 0.0, -0.1],
                     presentation_times=[0.0, 0.6, 1.2])
    assert kept.timestamp_shift == [0.1, 0.0, -0.1] and kept.presentation_times == [0.0, 0.6, 1.2]


def test_the_origin_fields_are_keyword_only():
    with pytest.raises(TypeError):
        ClipOrigin([0], [0.0], 30.0, 1, 1 / 30, None)
    origin = ClipOrigin(indices=[0], timestamps=[0.0], native_fps=30.0, num_total_frames=1, duration=1 / 30, path=None)
    assert origin.declared_frames is None and origin.backend == "exact"
