"""LLaVA-NeXT anyres: the grid in numbers (hand-computed canvases, grids and counts, and sweeps against
transformers' and LLaVA's code), then pixels (tiles, crops) and features (unpadding, packing), against
transformers' own code."""

import functools
import random
import types

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next import modeling_llava_next as hf_modeling
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

from vlm_vision import CLIP_STD
from vlm_vision.model.anyres import (
    DEFAULT_PINPOINTS,
    anyres_batch,
    anyres_grid_shape,
    anyres_num_tokens,
    anyres_pixel_values,
    anyres_tiles,
    encode_anyres_images,
    pack_image_features,
    resize_and_pad_size,
    select_best_resolution,
    unpad,
    unpad_shape,
)
from vlm_vision.model.transforms import CLIPImageTransform

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


# ----- unpadding ---------------------------------------------------------------------------------------

def test_unpad_slices_the_centre():
    canvas = torch.arange(48 * 48, dtype=torch.float32).view(1, 48, 48).repeat(2, 1, 1)  # (2, 48, 48)
    kept = unpad(canvas, (1080, 1920))
    assert kept.shape == (2, 28, 48)
    assert torch.equal(kept, canvas[:, 10:38])
    kept = unpad(canvas, (640, 480))
    assert torch.equal(kept, canvas[:, :, 6:42])


# ----- pixels ------------------------------------------------------------------------------------------

def test_tiles_geometry_white_image():
    # a constant image stays constant under bicubic resizing: tiles are 255 where the image is, 0 where padded
    white = torch.full((3, 200, 300), 255, dtype=torch.uint8)
    crops = anyres_tiles(white)  # transformers: 1 x 2 tiles of a 336 x 672 canvas, image resized to 336 x 504
    assert crops.shape == (3, 3, 336, 336) and crops.dtype == torch.uint8
    assert (crops[0] == 255).all()                             # base: squashed, no padding
    assert (crops[1, :, :, :84] == 0).all() and (crops[1, :, :, 84:] == 255).all()   # left = (672 - 504) // 2
    assert (crops[2, :, :, :252] == 255).all() and (crops[2, :, :, 252:] == 0).all()
    # LLaVA: 2 x 1 tiles of 672 x 336; the image becomes 225 x 336 (float: 224.00000000000003, ceil), top 223
    crops = anyres_tiles(white, convention="llava")
    assert crops.shape == (3, 3, 336, 336)
    assert (crops[1, :, :223] == 0).all() and (crops[1, :, 223:] == 255).all()
    assert (crops[2, :, :112] == 255).all() and (crops[2, :, 112:] == 0).all()


def test_tiles_are_row_major():
    # 2 x 2 grid of an 672 x 672 image: no resize, no padding, tiles are exact crops
    image = torch.randint(0, 256, (3, 672, 672), dtype=torch.uint8)
    crops = anyres_tiles(image)
    assert crops.shape == (5, 3, 336, 336)
    assert torch.equal(crops[1], image[:, :336, :336])
    assert torch.equal(crops[2], image[:, :336, 336:])
    assert torch.equal(crops[3], image[:, 336:, :336])
    assert torch.equal(crops[4], image[:, 336:, 336:])


def _smooth_image(h, w, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    image = PIL.Image.fromarray(small).resize((w, h), PIL.Image.BILINEAR)
    noise = rng.integers(-20, 21, (h, w, 3))
    return PIL.Image.fromarray(np.clip(np.asarray(image).astype(int) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def hf_image_processor():
    return LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                      image_grid_pinpoints=HF_PINPOINTS)


@pytest.mark.parametrize("hw", [(480, 640), (700, 300), (200, 300), (30, 900)])
def test_pixel_values_match_transformers_processor(hf_image_processor, hw):
    image = _smooth_image(*hw, seed=hw[0])
    ours, size = anyres_pixel_values(image)
    theirs = hf_image_processor(image, return_tensors="pt")
    assert size == hw == tuple(theirs["image_sizes"][0].tolist())
    assert ours.shape == theirs["pixel_values"][0].shape
    # torch's antialiased uint8 bicubic and PIL's differ by up to 2 grey levels on a few pixels; a
    # misplaced tile or a wrong resize size would differ by far more
    grey = 1 / (255 * torch.tensor(CLIP_STD)).view(3, 1, 1)  # one grey level, normalised, per channel
    levels = (ours - theirs["pixel_values"][0]).abs() / grey  # (crops, 3, S, S)
    assert levels.max() <= 2.01, levels.max()
    assert levels.mean() < 0.1, levels.mean()


# ----- feature packing ---------------------------------------------------------------------------------

def _tiny_hf_model(image_size, patch_size, pinpoints, hidden=16):
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, projection_dim=16)
    text = LlamaConfig(hidden_size=hidden, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=63,
                             image_grid_pinpoints=pinpoints)
    return LlavaNextForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def tiny_hf():
    return _tiny_hf_model(28, 7, TINY_PINPOINTS)


@pytest.fixture(scope="module")
def clip336_hf():
    return _tiny_hf_model(336, 14, HF_PINPOINTS)


def _pack_parity(model, hw, pinpoints, tile, n, convention_newline=True):
    d = model.config.text_config.hidden_size
    rows, cols = anyres_grid_shape(*hw, grid_pinpoints=pinpoints, tile_size=tile)
    features = torch.randn(1 + rows * cols, n, d)
    newline = torch.randn(d)
    theirs, lens = model.model.pack_image_features([features], torch.tensor([hw]), "default",
                                                   image_newline=newline if convention_newline else None)
    ours = pack_image_features(features, hw, newline if convention_newline else None,
                               grid_pinpoints=pinpoints, tile_size=tile)
    assert torch.equal(ours, theirs[0]), hw
    return ours


@pytest.mark.parametrize("hw", [(28, 28), (1, 1), (20, 30), (30, 20), (40, 90), (90, 40), (55, 88), (88, 55),
                                (100, 100), (3, 500), (500, 3), (57, 113)])
def test_pack_matches_transformers_tiny(tiny_hf, hw):
    ours = _pack_parity(tiny_hf, hw, TINY_PINPOINTS, 28, 16)
    assert ours.shape[0] == anyres_num_tokens(*hw, grid_pinpoints=TINY_PINPOINTS, tile_size=28, patch_size=7)


@pytest.mark.parametrize("hw", [(336, 336), (480, 640), (640, 480), (1080, 1920), (800, 800), (10, 3000), (3000, 10)])
def test_pack_matches_transformers_clip336(clip336_hf, hw):
    ours = _pack_parity(clip336_hf, hw, HF_PINPOINTS, 336, 576)
    assert ours.shape[0] == anyres_num_tokens(*hw)


def test_pack_without_newline_matches_transformers(tiny_hf):
    ours = _pack_parity(tiny_hf, (40, 90), TINY_PINPOINTS, 28, 16, convention_newline=False)
    rows, cols = unpad_shape(40, 90, 4, 8)
    assert ours.shape == (16 + rows * cols, 16)


def test_pack_layout_by_hand():
    # 1 x 2 tiles of g = 2: base tokens first, then each kept row followed by the newline
    features = torch.arange(3 * 4, dtype=torch.float32).view(3, 4, 1)  # (crops, N, D=1)
    newline = torch.tensor([-1.0])
    out = pack_image_features(features, (10, 20), newline, grid_pinpoints=[[2, 4]], tile_size=2)
    # canvas rows: [4 5 8 9], [6 7 10 11]; the image fills it exactly (20 / 10 = 4 / 2)
    assert out.squeeze(1).tolist() == [0, 1, 2, 3, 4, 5, 8, 9, -1, 6, 7, 10, 11, -1]


# ----- errors ------------------------------------------------------------------------------------------

def test_errors_name_the_input():
    with pytest.raises(ValueError, match="1 \\+ 1 x 2 = 3 crops, but features have 5"):
        pack_image_features(torch.zeros(5, 576, 4), (336, 336), None)
    with pytest.raises(ValueError, match="N=577"):
        pack_image_features(torch.zeros(3, 577, 4), (336, 336), None)
    with pytest.raises(ValueError, match="image_newline"):
        pack_image_features(torch.zeros(3, 576, 4), (336, 336), torch.zeros(5))
    with pytest.raises(ValueError, match="one image"):
        anyres_pixel_values(np.zeros((2, 40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="tile_size=336"):
        anyres_pixel_values(np.zeros((40, 40, 3), np.uint8), transform=CLIPImageTransform(224))


# ----- the model side: tower -> projector -> packing, against transformers -----------------------------

def _pad_crops(crops):
    """transformers' batch layout: float[I, P_max, 3, S, S], short images padded with zero crops."""
    most = max(c.shape[0] for c in crops)
    return torch.stack([torch.cat([c, c.new_zeros(most - c.shape[0], *c.shape[1:])]) for c in crops])


def _ported(hf_model):
    from projector import build_projector, load_projector
    from vlm_vision import CLIPVisionTower

    tower = CLIPVisionTower.from_transformers(hf_model.model.vision_tower, select_layer=-2)
    projector = build_projector("mlp2x_gelu", tower.hidden_size, hf_model.config.text_config.hidden_size)
    load_projector(projector, hf_model.state_dict())
    return tower.eval(), projector.eval()


def test_encode_anyres_images_matches_transformers(tiny_hf):
    tower, projector = _ported(tiny_hf)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(40, 90), (20, 30), (100, 57), (5, 300)]]
    crops, sizes = anyres_batch(images, CLIPImageTransform(28), grid_pinpoints=TINY_PINPOINTS, tile_size=28)
    assert sizes.tolist() == [[40, 90], [20, 30], [100, 57], [5, 300]]
    padded = _pad_crops(crops)  # (I, P_max, 3, 28, 28)
    with torch.no_grad():
        theirs = tiny_hf.model.get_image_features(pixel_values=padded, image_sizes=sizes).pooler_output
        newline = tiny_hf.model.image_newline
        from_list = encode_anyres_images(tower, projector, crops, sizes, newline, grid_pinpoints=TINY_PINPOINTS)
        from_padded = encode_anyres_images(tower, projector, padded, sizes, newline, grid_pinpoints=TINY_PINPOINTS)
    assert len(from_list) == len(theirs) == 4
    for ours, ours_padded, ref, (h, w) in zip(from_list, from_padded, theirs, sizes.tolist()):
        assert ours.shape == ref.shape
        assert ours.shape[0] == anyres_num_tokens(h, w, grid_pinpoints=TINY_PINPOINTS, tile_size=28, patch_size=7)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(ours, ours_padded)


def test_encode_anyres_images_checks_crop_counts(tiny_hf):
    tower, projector = _ported(tiny_hf)
    crops = [torch.zeros(3, 3, 28, 28)]  # 40 x 90 takes 1 x 2 tiles: 3 crops
    encode_anyres_images(tower, projector, crops, [(40, 90)], None, grid_pinpoints=TINY_PINPOINTS)
    with pytest.raises(ValueError, match=r"image 0 must have float\[5, 3, S, S\]"):
        encode_anyres_images(tower, projector, crops, [(100, 100)], None, grid_pinpoints=TINY_PINPOINTS)
    with pytest.raises(ValueError, match="need up to 5"):
        encode_anyres_images(tower, projector, torch.zeros(1, 3, 3, 28, 28), [(100, 100)], None,
                             grid_pinpoints=TINY_PINPOINTS)
