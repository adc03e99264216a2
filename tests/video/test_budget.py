"""Frame budgets: hand-computed frame counts, strides and token counts (video/budget.py)."""

from __future__ import annotations

import pytest

from video.budget import (
    VideoBudget,
    VideoLayout,
    budget_frame_limit,
    candidate_strides,
    choose_video_budget,
    frame_cap,
    sampled_frame_count,
    stride_for_frames,
)
from video.decode import load_video
from video.sampling import fps_indices

CLIP336 = {2: 144, 3: 64, 4: 36}  # tokens per frame of a 24x24 grid pooled by 2, 3, 4


def test_short_clip_at_one_fps():
    # 4 s at 30 fps: step 30 -> frames 0, 30, 60, 90; well under 64 frames and any budget
    assert choose_video_budget(120, 30.0, fps=1.0, max_frames=64, tokens=CLIP336, max_tokens=9216) == \
        VideoBudget(num_frames=4, stride=2, num_tokens=4 * 144)


def test_long_video_is_capped_at_max_frames():
    # one hour at 30 fps would be 3600 frames at 1 fps; LLaVA-Video's cap keeps 64
    assert choose_video_budget(108_000, 30.0, fps=1.0, max_frames=64, tokens={2: 144}) == VideoBudget(64, 2, 9216)


def test_fixed_count_mode_is_llava_next_video():
    # fps=None: the count is num_frames whatever the length (LLaVA-NeXT-Video: 32 x 144)
    assert choose_video_budget(90, 30.0, num_frames=32, tokens={2: 144}) == VideoBudget(32, 2, 4608)
    assert choose_video_budget(108_000, 30.0, num_frames=64, tokens={2: 144}) == VideoBudget(64, 2, 9216)


def test_budget_forces_stride_3():
    # 64 frames: 64*144 = 9216 > 4096, 64*64 = 4096 fits exactly
    assert choose_video_budget(108_000, 30.0, fps=1.0, max_frames=64, tokens=CLIP336, max_tokens=4096) == \
        VideoBudget(64, 3, 4096)


def test_budget_forces_stride_4():
    # 64*64 = 4096 > 3000, 64*36 = 2304 fits
    assert choose_video_budget(108_000, 30.0, fps=1.0, max_frames=64, tokens=CLIP336, max_tokens=3000) == \
        VideoBudget(64, 4, 2304)


def test_budget_drops_frames_only_past_the_coarsest_stride():
    # 2000 // 36 = 55 frames fit at stride 4; 55*64 = 3520 > 2000, 55*36 = 1980
    assert frame_cap(2000, CLIP336) == 55
    assert choose_video_budget(108_000, 30.0, fps=1.0, max_frames=64, tokens=CLIP336, max_tokens=2000) == \
        VideoBudget(55, 4, 1980)


def test_min_frames_beating_the_budget_is_a_clear_error():
    # 500 tokens hold 13 frames at stride 4 (468); 16 frames need 576
    with pytest.raises(ValueError) as e:
        choose_video_budget(108_000, 30.0, fps=1.0, min_frames=16, max_frames=64, tokens=CLIP336, max_tokens=500)
    message = str(e.value)
    for part in ("min_frames=16", "576 tokens", "stride 4", "max_video_tokens=500", "holds 13 frames"):
        assert part in message


def test_min_frames_raise_a_short_clip():
    # 3 s at 1 fps is 3 frames; LLaVA-Video's min_frames lifts it to 8 (frames repeat if need be)
    assert choose_video_budget(90, 30.0, fps=1.0, min_frames=8, tokens={2: 144}) == VideoBudget(8, 2, 1152)


def test_stride_for_frames_and_no_budget():
    assert stride_for_frames(64, None, CLIP336) == (2, 9216)
    assert stride_for_frames(10, 4096, CLIP336) == (2, 1440)
    with pytest.raises(ValueError, match="100 frames do not fit in max_video_tokens=3000"):
        stride_for_frames(100, 3000, CLIP336)


def test_budget_frame_limit():
    assert budget_frame_limit(64, 1, None, CLIP336) == 64
    assert budget_frame_limit(64, 1, 2000, CLIP336) == 55
    assert budget_frame_limit(None, 1, 2000, CLIP336) == 55


@pytest.mark.parametrize("total,native,fps,low,high", [
    (120, 30.0, 1.0, 1, 64), (101, 29.97, 2.0, 1, 8), (90, 30.0, 1.0, 8, 64), (7, 25.0, 1.0, 4, 16),
    (1000, 24.0, 0.5, 1, None), (37, 12.5, 3.0, 2, 5),
])
def test_frame_count_matches_the_sampler(total, native, fps, low, high):
    indices = fps_indices(total, native, fps, high, min_frames=low)
    assert len(indices) == sampled_frame_count(total, native, fps, min_frames=low, max_frames=high)


def test_candidate_strides():
    assert candidate_strides((24, 24), 2, "average") == [2, 3, 4]
    assert candidate_strides((16, 16), 2, "max") == [2, 4]
    assert candidate_strides((27, 27), 2, "bilinear") == [2, 3, 4]
    assert candidate_strides((24, 24), 4, "average", slowfast=True) == [4, 6]  # 5, 7 do not divide 24; 8 does, but 16 does not
    with pytest.raises(ValueError, match="does not divide the 24x24"):
        candidate_strides((24, 24), 5, "average")


def test_layout_counts_by_hand():
    plain = VideoLayout()
    assert plain.strides() == [2] and plain.video_tokens(32) == 4608
    assert VideoLayout(newline="grid").frame_tokens(2, 2) == [156, 156]  # 12 rows of 12 + newline
    assert VideoLayout(newline="frame").count(3, 3) == 3 * 65
    assert VideoLayout(newline="one_token").frame_tokens(2, 2) == [144, 145]
    budget = VideoLayout(max_video_tokens=4096)
    assert budget.strides() == [2, 3, 4]
    assert (budget.stride_for(28), budget.stride_for(29), budget.stride_for(64)) == (2, 3, 3)  # 28*144 = 4032
    assert budget.video_tokens(65) == 65 * 36


def test_slowfast_counts_by_hand():
    # stride 2 slow: 12x12; fast: 6x6; every frame + faster_token. Frames 0 and 3 are slow with k=3.
    layout = VideoLayout(newline="no_token", faster_token_stride=3)
    assert layout.frame_tokens(5, 2) == [145, 37, 37, 145, 37]
    assert VideoLayout(newline="grid", faster_token_stride=2).frame_tokens(3, 2) == [157, 43, 157]
    assert VideoLayout(newline="frame", faster_token_stride=2).frame_tokens(2, 2) == [146, 38]
    assert VideoLayout(newline="one_token", faster_token_stride=2).frame_tokens(2, 2) == [145, 38]
    # LLaVA-Video's SigLIP 27x27 grid, bilinear, 64 frames, k=10: 7 slow (14x15+1), 57 fast (7x8+1)
    siglip = VideoLayout(grid=(27, 27), pool_mode="bilinear", newline="grid", faster_token_stride=10)
    assert siglip.count(64, 2) == 7 * 211 + 57 * 57


def test_layout_budget_matches_choose_video_budget():
    layout = VideoLayout(newline="grid", max_video_tokens=5000)
    got = layout.budget(108_000, 30.0, fps=1.0, max_frames=64)
    # 64 frames: 64*156 = 9984 > 5000; stride 3: 8 rows of 9 -> 72, 64*72 = 4608
    assert got == VideoBudget(64, 3, 4608)
    assert layout.video_tokens(64) == 4608


def test_load_video_min_frames_on_a_real_file():
    # realshort.mp4: 36 frames at 30 fps gives 2 frames at 1 fps (0, 30); min_frames=5 gives 5
    clip = load_video("tests/data/realshort.mp4", fps=1.0, min_frames=5)
    assert len(clip.indices) == 5 == sampled_frame_count(clip.num_total_frames, clip.native_fps, 1.0, min_frames=5)
    with pytest.raises(ValueError, match="min_frames"):
        load_video("tests/data/realshort.mp4", num_frames=4, min_frames=5)
