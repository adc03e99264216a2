"""What a cached token file must record to stand in for a run (pure; the end-to-end refusals are in test_train)."""

from __future__ import annotations

import types

from vlm_vision.training.provenance import expected_settings

TOWER = types.SimpleNamespace(select_layer=-2)


def test_uniform_sampling_fixes_the_frame_count_and_the_stride():
    assert expected_settings(TOWER, num_frames=32, fps=None, pool_stride=2, pool_mode="average") == {
        "random_weights": False, "layer": -2, "pool_stride": 2, "pool_mode": "average", "fps": None,
        "sampling": "exact", "partial": False, "frames": 32}


def test_fps_sampling_and_a_token_budget_compare_what_the_extraction_recorded():
    expected = expected_settings(TOWER, num_frames=None, fps=1.0, pool_stride=2, pool_mode="average",
                                 max_video_tokens=9216)
    assert "frames" not in expected and "pool_stride" not in expected  # both vary per video under a budget
    assert (expected["fps"], expected["base_pool_stride"], expected["max_video_tokens"]) == (1.0, 2, 9216)
