"""An extraction run's typed settings (`video.corpus.settings`): values refused by name, `load_video`'s arguments."""

from __future__ import annotations

import pytest

from video.budget import VideoLayout
from video.corpus.settings import ExtractSettings, load_arguments


@pytest.mark.parametrize(("values", "message"), [
    ({"num_frames": 0}, "num_frames must be an int >= 1, got 0"),
    ({"min_frames": 2.5}, "min_frames must be an int >= 1, got 2.5"),
    ({"batch_size": True}, "batch_size must be an int >= 1, got True"),
    ({"workers": -1}, "workers must be an int >= 0, got -1"),
    ({"fps": 0}, "fps must be a positive number of frames per second or None, got 0"),
    ({"pool_mode": "median"}, "pool_mode must be one of ('average', 'max', 'bilinear'), got 'median'"),
    ({"video_newline": "row"}, "video_newline must be one of ('no_token', 'one_token', 'frame', 'grid'), got 'row'"),
    ({"backend": "opencv"}, "backend must be one of ('exact', 'decord'), got 'opencv'"),
    ({"dtype": "float64"}, "dtype must be one of ('bfloat16', 'float16', 'float32'), got 'float64'"),
])
def test_a_value_no_run_can_use_is_refused_naming_its_field(values, message):
    with pytest.raises(ValueError) as error:
        ExtractSettings(**values)
    assert str(error.value) == message


def test_settings_are_frozen_and_the_edges_are_accepted():
    settings = ExtractSettings(workers=0, fps=0.5, max_frames=1, batch_size=1)
    with pytest.raises(AttributeError):
        settings.num_frames = 8  # type: ignore[misc]


def test_load_arguments_fixed_count_and_rate():
    layout = VideoLayout(grid=(24, 24))
    common = {"sampling": "exact", "backend": "exact", "allow_partial": False, "frame_scale": None}
    assert load_arguments(ExtractSettings(num_frames=8), layout) == {**common, "num_frames": 8}
    rate = ExtractSettings(fps=1.0, num_frames=16, min_frames=2, sampling="keyframe")
    assert load_arguments(rate, layout) == {**common, "sampling": "keyframe", "fps": 1.0, "min_frames": 2,
                                            "max_frames": 16}  # max_frames None: num_frames is the most
    assert load_arguments(ExtractSettings(fps=1.0, max_frames=64), layout)["max_frames"] == 64


def test_load_arguments_lower_the_most_frames_to_the_token_budget():
    # strides 2..4 on a 24x24 grid; the coarsest, 4, gives 6x6 = 36 tokens a frame: 1440 tokens hold 40 frames
    layout = VideoLayout(grid=(24, 24), pool_stride=2, max_video_tokens=1440)
    assert load_arguments(ExtractSettings(fps=1.0, max_frames=64), layout)["max_frames"] == 40
    assert load_arguments(ExtractSettings(num_frames=64), layout)["num_frames"] == 40
