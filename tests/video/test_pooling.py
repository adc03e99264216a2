"""Spatial pooling: parity with transformers' LlavaNextVideoPooler, hand-computed cases, token counts."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaNextVideoConfig
from transformers.models.llava_next_video.modeling_llava_next_video import LlavaNextVideoPooler

from video import num_video_tokens, spatial_pool
from video.pooling import NEWLINE_LAYOUTS


def _hf_pooler(mode: str, stride: int, side: int, width: int) -> LlavaNextVideoPooler:
    config = LlavaNextVideoConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=width, num_attention_heads=2,
                           intermediate_size=2 * width, image_size=side * 4, patch_size=4),
        text_config=dict(model_type="llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, vocab_size=64),
        spatial_pool_mode=mode,
        spatial_pool_stride=stride,
    )
    return LlavaNextVideoPooler(config).eval()


@pytest.mark.parametrize("mode", ["average", "max"])
@pytest.mark.parametrize("side, stride", [(24, 2), (24, 4), (6, 2), (6, 3), (4, 1)])
def test_matches_transformers_pooler(mode, side, stride):
    width = 8
    features = torch.randn(5, side * side, width)  # (T, N, D)
    expected = _hf_pooler(mode, stride, side, width)(features)
    got = spatial_pool(features, grid=(side, side), stride=stride, mode=mode)
    assert got.shape == (5, (side // stride) ** 2, width)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_clip336_shapes():
    features = torch.randn(2, 576, 1024)
    assert spatial_pool(features).shape == (2, 144, 1024)
    assert spatial_pool(features, stride=4).shape == (2, 36, 1024)
    assert spatial_pool(features, stride=1).shape == (2, 576, 1024)
    assert spatial_pool(features, mode="bilinear").shape == (2, 144, 1024)


def test_average_and_max_hand_computed():
    # one frame, a 2x4 grid of tokens numbered 0..7 row-major, two channels (x and 10x)
    values = torch.arange(8.0)
    features = torch.stack([values, 10 * values], dim=-1)[None]  # (1, 8, 2)
    # 2x2 windows: {0, 1, 4, 5} and {2, 3, 6, 7}
    avg = spatial_pool(features, grid=(2, 4), stride=2, mode="average")
    mx = spatial_pool(features, grid=(2, 4), stride=2, mode="max")
    assert avg.tolist() == [[[2.5, 25.0], [4.5, 45.0]]]
    assert mx.tolist() == [[[5.0, 50.0], [7.0, 70.0]]]


def test_non_square_grid_keeps_row_major_order():
    # 4x6 grid, stride 2 -> 2x3; token (r, c) of the output averages rows 2r..2r+1, cols 2c..2c+1
    h, w = 4, 6
    grid = torch.arange(h * w, dtype=torch.float64).reshape(h, w)
    features = grid.reshape(1, h * w, 1)  # (1, 24, 1)
    got = spatial_pool(features, grid=(h, w), stride=2).reshape(2, 3)
    expected = torch.tensor([[grid[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean() for c in range(3)] for r in range(2)])
    torch.testing.assert_close(got, expected.to(got.dtype))


def test_bilinear_on_an_even_grid_is_the_2x2_mean():
    """Bilinear resizing (align_corners=False) by exactly 1/2 samples each output at the centre of
    a 2x2 block, where the interpolation weights are all 1/4."""
    features = torch.randn(3, 36, 5, dtype=torch.float64)
    bilinear = spatial_pool(features, grid=(6, 6), stride=2, mode="bilinear")
    average = spatial_pool(features, grid=(6, 6), stride=2, mode="average")
    torch.testing.assert_close(bilinear, average)


def test_bilinear_odd_grid_hand_computed():
    """5x5 -> ceil(5/2) = 3x3. Output row i samples source row (i + 0.5) * 5/3 - 0.5, i.e. 1/3, 2
    and 11/3 (same for columns). Bilinear interpolation of the linear ramp f(r, c) = 5r + c is
    exact, so output (i, j) = 5 * src[i] + src[j]."""
    features = torch.arange(25, dtype=torch.float64).reshape(1, 25, 1)
    got = spatial_pool(features, grid=(5, 5), stride=2, mode="bilinear").reshape(3, 3)
    src = torch.tensor([1 / 3, 2.0, 11 / 3], dtype=torch.float64)
    expected = 5 * src[:, None] + src[None, :]
    torch.testing.assert_close(got, expected)


def test_keeps_dtype():
    features = torch.randn(2, 16, 4, dtype=torch.bfloat16)
    for mode in ("average", "max", "bilinear"):
        assert spatial_pool(features, grid=(4, 4), mode=mode).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "shape, kwargs, error, match",
    [
        ((2, 575, 8), {}, ValueError, "features have 575 tokens per frame but grid 24x24 needs 576"),
        ((2, 30, 8), dict(grid=(5, 6)), ValueError, "average pooling needs a grid divisible by the stride: grid 5x6, stride 2"),
        ((2, 30, 8), dict(grid=(5, 6), mode="max"), ValueError, "max pooling needs a grid divisible"),
        ((2, 36, 8), dict(grid=(6, 6), stride=4), ValueError, "grid 6x6, stride 4"),
        ((2, 36, 8), dict(grid=(6, 6), mode="conv"), ValueError, r"unknown pooling mode 'conv'; choose from \('average', 'max', 'bilinear'\)"),
        ((2, 36, 8), dict(grid=(6, 6), stride=0), ValueError, "stride must be an int >= 1, got 0"),
        ((2, 36, 8), dict(grid=(6,)), ValueError, "grid must be two positive ints"),
        ((36, 8), dict(grid=(6, 6)), ValueError, r"features must be a \(T, N, D\) tensor"),
    ],
)
def test_bad_input(shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        spatial_pool(torch.zeros(shape), **kwargs)


def test_bilinear_accepts_grids_the_stride_does_not_divide():
    assert spatial_pool(torch.zeros(1, 30, 2), grid=(5, 6), mode="bilinear").shape == (1, 9, 2)


# token counts ------------------------------------------------------------------------------------


def test_num_video_tokens_reference_layouts():
    """Reference §3.4: 32 frames of CLIP-336 at stride 2."""
    assert num_video_tokens(32) == 32 * 144 == 4608
    assert num_video_tokens(32, newline="one_token") == 4609
    assert num_video_tokens(32, newline="frame") == 32 * 145
    assert num_video_tokens(32, newline="grid") == 32 * 12 * 13
    assert num_video_tokens(8, stride=4) == 8 * 36
    assert num_video_tokens(1, stride=1) == 576
    assert num_video_tokens(2, grid=(5, 6), stride=2, newline="grid") == 2 * 3 * 4  # ceil: 3 rows of 3 + 1


def test_num_video_tokens_agrees_with_spatial_pool():
    for grid, stride in [((24, 24), 2), ((24, 24), 3), ((6, 8), 2), ((5, 7), 2)]:
        pooled = spatial_pool(torch.zeros(3, grid[0] * grid[1], 1), grid=grid, stride=stride, mode="bilinear")
        assert num_video_tokens(3, grid=grid, stride=stride) == pooled.shape[0] * pooled.shape[1]


def test_num_video_tokens_bad_input():
    with pytest.raises(ValueError, match=r"unknown newline layout 'row'; choose from \('no_token', 'one_token', 'frame', 'grid'\)"):
        num_video_tokens(4, newline="row")
    with pytest.raises(ValueError, match="num_frames must be an int >= 1, got 0"):
        num_video_tokens(0)
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        num_video_tokens(4, stride=-2)
    assert set(NEWLINE_LAYOUTS) == {"no_token", "one_token", "frame", "grid"}
