"""The anyres grid in numbers: hand-computed canvases, grids and counts, and sweeps against transformers' and LLaVA's code."""

import functools
import random
import types

import pytest
import torch
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next import modeling_llava_next as hf_modeling
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

from vlm_vision.model.anyres_grid import (
    DEFAULT_PINPOINTS,
    anyres_grid_shape,
    anyres_num_tokens,
    resize_and_pad_size,
    select_best_resolution,
    unpad_shape,
)

HF_PINPOINTS = [list(p) for p in DEFAULT_PINPOINTS]
TINY_PINPOINTS = [[28, 56], [56, 28], [56, 56]]  # the test models: 28 px tiles of 7 px patches, g = 4

EDGE_SIDES = [1, 2, 3, 7, 10, 14, 100, 224, 300, 335, 336, 337, 479, 480, 500, 640, 671, 672, 673, 700, 800,
              1000, 1007, 1008, 1009, 1080, 1344, 1920, 2000, 3000, 4000]
# sizes whose unpadding, on the grid transformers picks, depends on int(round(x, 7)) vs int(x)
ROUNDING_SENSITIVE = [(47, 1128), (55, 176), (88, 55), (205, 656), (396, 704), (423, 752), (792, 1408), (799, 376)]


def sweep_sizes(sides=EDGE_SIDES, n_random=300, max_side=5000):
    rng = random.Random(7)
    sizes = [(h, w) for h in sides for w in sides]
    sizes += [(rng.randint(1, max_side), rng.randint(1, max_side)) for _ in range(n_random)]
    sizes += [(rng.randint(1, 400), rng.randint(1, 400)) for _ in range(n_random)]  # where ties live
    return sizes + ROUNDING_SENSITIVE


# ----- oracles built from transformers' functions -------------------------------------------------

def hf_model_num_tokens(h, w, pinpoints, tile, patch):
    """Length of transformers' packed features, from its modeling helpers on a dummy canvas."""
    g = tile // patch
    crops = hf_modeling.image_size_to_num_patches([h, w], pinpoints, tile)
    rows, cols = hf_modeling.get_anyres_image_grid_shape([h, w], pinpoints, tile)
    assert crops == 1 + rows * cols
    canvas = torch.empty(1, rows * g, cols * g)
    kept = hf_modeling.unpad_image(canvas, [h, w])
    return g * g + kept.shape[1] * (kept.shape[2] + 1)


def hf_processor_num_tokens(h, w, pinpoints, tile, patch):
    """transformers' `LlavaNextProcessor` count (llava-hf configs: CLS counted, then removed by "default")."""
    proc = types.SimpleNamespace(image_processor=types.SimpleNamespace(image_grid_pinpoints=pinpoints),
                                 patch_size=patch, num_additional_image_tokens=1)
    proc._get_unpadded_features = functools.partial(LlavaNextProcessor._get_unpadded_features, proc)
    return LlavaNextProcessor._get_number_of_features(proc, h, w, tile, tile) - 1


def llava_select(h, w, pinpoints):
    """LLaVA's choice as (height, width): its algorithm is transformers' with every pair read (w, h)."""
    cw, ch = hf_select_best_resolution((w, h), pinpoints)
    return ch, cw


def llava_num_tokens(h, w, pinpoints, tile, patch):
    """LLaVA's count written from the reference: its grid choice and `int()` truncation when unpadding."""
    g = tile // patch
    ch, cw = llava_select(h, w, pinpoints)
    rows, cols = ch // tile * g, cw // tile * g
    if w / h > cols / rows:
        cut = (rows - int(h * (cols / w))) // 2
        rows -= 2 * cut
    else:
        cut = (cols - int(w * (rows / h))) // 2
        cols -= 2 * cut
    return g * g + rows * (cols + 1)


# ----- hand-computed -----------------------------------------------------------------------------------

@pytest.mark.parametrize("hw, canvas", [
    ((480, 640), (672, 672)),
    ((640, 480), (672, 672)),
    ((1080, 1920), (672, 672)),
    ((800, 800), (672, 672)),
    ((10, 3000), (336, 1008)),
    ((3000, 10), (1008, 336)),
    ((300, 900), (336, 1008)),   # 3:1 fits 1x3 exactly
    ((500, 700), (672, 672)),
])
def test_select_best_resolution_hand_computed(hw, canvas):
    assert select_best_resolution(*hw, HF_PINPOINTS) == canvas
    assert select_best_resolution(*hw, HF_PINPOINTS, convention="llava") == canvas  # no tie: both agree


@pytest.mark.parametrize("hw", [(336, 336), (1, 1), (200, 300), (300, 200), (336, 100)])
def test_ties_small_images_break_differently(hw):
    # an image within 336 x 336 keeps all its pixels in 336x672 and 672x336 and wastes the same: the
    # first listed wins, and the two conventions list them in opposite orientations
    assert select_best_resolution(*hw) == (336, 672)
    assert select_best_resolution(*hw, convention="llava") == (672, 336)
    assert anyres_grid_shape(*hw) == (1, 2)
    assert anyres_grid_shape(*hw, convention="llava") == (2, 1)


def test_tie_on_wasted_area_keeps_first_listed():
    # 672 x 336 and 336 x 672 both fit the whole of a 100 x 100 image and waste the same area
    assert select_best_resolution(100, 100, [[672, 336], [336, 672]]) == (672, 336)
    assert select_best_resolution(100, 100, [[336, 672], [672, 336]]) == (336, 672)
    # equal kept pixels, less waste wins even when listed later
    assert select_best_resolution(100, 100, [[672, 672], [336, 336]]) == (336, 336)


@pytest.mark.parametrize("hw, tokens", [
    ((336, 336), 1176),
    ((480, 640), 2340),
    ((640, 480), 2352),
    ((1080, 1920), 1948),
    ((800, 800), 2928),
    ((10, 3000), 576),     # one feature row would be 0.24 rows tall: no grid tokens at all
    ((3000, 10), 648),     # 72 rows of zero columns: only the 72 newlines
])
def test_num_tokens_table(hw, tokens):
    assert anyres_num_tokens(*hw) == tokens
    assert anyres_num_tokens(*hw, convention="llava") == tokens


def test_num_tokens_conventions_differ_for_small_non_square():
    # transformers: 1 x 2 tiles, 24 x 48 canvas, 36 columns kept -> 576 + 24 * 37
    assert anyres_num_tokens(200, 300) == 576 + 24 * 37 == 1464
    # LLaVA: 2 x 1 tiles, 48 x 24 canvas, int(200 * 24 / 300) = 16 rows kept -> 576 + 16 * 25
    assert anyres_num_tokens(200, 300, convention="llava") == 576 + 16 * 25 == 976


@pytest.mark.parametrize("args, kept", [
    ((1080, 1920, 48, 48), (28, 48)),   # fits 27 rows; (48 - 27) // 2 = 10 cut each side keeps 28
    ((480, 640, 48, 48), (36, 48)),
    ((640, 480, 48, 48), (48, 36)),
    ((800, 800, 48, 48), (48, 48)),
    ((336, 336, 24, 48), (24, 24)),
    ((336, 336, 48, 24), (24, 24)),
    ((10, 3000, 24, 72), (0, 72)),
    ((3000, 10, 72, 24), (72, 0)),
])
def test_unpad_shape_hand_computed(args, kept):
    assert unpad_shape(*args) == kept


def test_unpad_rounding_conventions():
    # 55 * (24 / 88) = 14.999999999999998 in floating point
    assert 55 * (24 / 88) < 15
    assert unpad_shape(55, 88, 24, 24) == (16, 24)                       # 15 rows, cut (24 - 15) // 2 = 4
    assert unpad_shape(55, 88, 24, 24, convention="llava") == (14, 24)   # 14 rows, cut 5
    assert unpad_shape(88, 55, 24, 24) == (24, 16)
    assert unpad_shape(88, 55, 24, 24, convention="llava") == (24, 14)


@pytest.mark.parametrize("hw", ROUNDING_SENSITIVE)
def test_rounding_sensitive_sizes_really_are(hw):
    rows, cols = anyres_grid_shape(*hw)
    assert unpad_shape(*hw, 24 * rows, 24 * cols) != unpad_shape(*hw, 24 * rows, 24 * cols, convention="llava")


@pytest.mark.parametrize("args, size", [
    ((480, 640, 672, 672), (504, 672)),
    ((1080, 1920, 672, 672), (378, 672)),
    ((10, 3000, 336, 1008), (4, 1008)),      # ceil(3.36)
    ((1, 1, 336, 672), (336, 336)),          # upscaled to fill the tighter side
    ((200, 300, 336, 672), (336, 504)),
    ((200, 300, 672, 336), (225, 336)),      # 200 * (336 / 300) = 224.00000000000003, ceil -> 225
])
def test_resize_and_pad_size_hand_computed(args, size):
    assert resize_and_pad_size(*args) == size


# ----- sweeps against transformers ------------------------------------------------------------------

@pytest.mark.parametrize("pinpoints, tile, patch", [(HF_PINPOINTS, 336, 14), (TINY_PINPOINTS, 28, 7)])
def test_sweep_matches_transformers(pinpoints, tile, patch):
    sizes = sweep_sizes(max_side=5000 if tile == 336 else 500)
    for h, w in sizes:
        assert select_best_resolution(h, w, pinpoints) == tuple(hf_select_best_resolution((h, w), pinpoints)), (h, w)
        ours = anyres_num_tokens(h, w, grid_pinpoints=pinpoints, tile_size=tile, patch_size=patch)
        assert ours == hf_model_num_tokens(h, w, pinpoints, tile, patch), (h, w)
        assert ours == hf_processor_num_tokens(h, w, pinpoints, tile, patch), (h, w)


def test_sweep_llava_convention():
    differ = 0
    for h, w in sweep_sizes():
        assert select_best_resolution(h, w, HF_PINPOINTS, convention="llava") == llava_select(h, w, HF_PINPOINTS)
        ours = anyres_num_tokens(h, w, convention="llava")
        assert ours == llava_num_tokens(h, w, HF_PINPOINTS, 336, 14), (h, w)
        differ += ours != anyres_num_tokens(h, w)
    assert differ > 0  # the conventions really are different somewhere in the sweep


# ----- errors ------------------------------------------------------------------------------------------

def test_grid_errors_name_the_input():
    with pytest.raises(ValueError, match="convention"):
        select_best_resolution(10, 10, convention="hf")
    with pytest.raises(ValueError, match="height"):
        anyres_num_tokens(0, 10)
    with pytest.raises(TypeError, match="width"):
        anyres_num_tokens(10, 2.5)
    with pytest.raises(TypeError, match="height"):
        anyres_num_tokens(True, 10)
    with pytest.raises(ValueError, match="grid_pinpoints"):
        select_best_resolution(10, 10, [])
    with pytest.raises(ValueError, match="multiple of tile_size=336"):
        anyres_grid_shape(10, 10, grid_pinpoints=[[336, 500]])
    with pytest.raises(ValueError, match="patch_size"):
        anyres_num_tokens(10, 10, patch_size=15)
