"""LLaVA-NeXT anyres tiling: pixels (tiles, crops) and features (unpadding, packing), against transformers' own code.

The grid's numbers (canvas, tiles, token counts) are tested in test_anyres_grid.py."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from tests.vlm_vision.model.test_anyres_grid import HF_PINPOINTS, TINY_PINPOINTS
from vlm_vision import CLIP_STD
from vlm_vision.model.anyres import (anyres_batch, anyres_pixel_values, anyres_tiles, encode_anyres_images,
                               pack_image_features, unpad)
from vlm_vision.model.anyres_grid import anyres_grid_shape, anyres_num_tokens, unpad_shape
from vlm_vision.model.transforms import CLIPImageTransform


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
