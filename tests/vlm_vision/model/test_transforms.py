"""CLIPImageTransform against transformers' CLIPImageProcessor on real photos, plus every input kind.

Parity budget (normalised units; one grey level is 1 / (255 * std) = 0.0142..0.0150): mean abs
diff <= 0.002 and max abs diff <= 0.03. Measured with torch 2.13 CPU / transformers 5.24 / Pillow 13:
every photo at S = 336 and 224, both orientations, max 0.0150 (one grey level), mean 0.00000-0.00006.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from skimage import data as skdata
from transformers import CLIPImageProcessor

from vlm_vision import CLIPImageTransform
from vlm_vision.model.configs import CLIP_MEAN, CLIP_STD
from vlm_vision.model.transforms import _crop_offset, _pad_offsets, _shortest_edge_size
from video.frame_resize import resize_uint8

MEAN_TOL, MAX_TOL = 0.002, 0.03


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """Real uint8[H, W, 3] photos: square, wide, and the wide ones transposed to tall."""
    wide = {
        "coffee": skdata.coffee(),  # 400x600
        "chelsea": skdata.chelsea(),  # 300x451: enlarged at S=336, odd crop margin
        "rocket": skdata.rocket(),  # 427x640
        "motorcycle_left": skdata.stereo_motorcycle()[0],  # 500x741
    }
    out = {"astronaut": skdata.astronaut()}  # 512x512
    for name, image in wide.items():
        out[name] = image
        out[f"{name}_tall"] = np.ascontiguousarray(image.transpose(1, 0, 2))
    return out


def reference(size: int) -> CLIPImageProcessor:
    """transformers' processor as CLIP's preprocessor_config.json sets it up (PIL backend here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  do_convert_rgb=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def reference_pixels(size: int, images) -> torch.Tensor:
    return reference(size)(images=images, return_tensors="pt")["pixel_values"]


def to_uint8(pixels: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Undo the normalisation: float[T, 3, S, S] -> the uint8 values it came from."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (pixels * s + m).mul(255).round().to(torch.uint8)


# ----- parity with transformers -----------------------------------------------------------------

@pytest.mark.parametrize("orientation, turned", [(6, "clockwise"), (8, "counterclockwise"), (3, "half"), (1, "none")])
def test_image_files_come_upright_like_transformers_load_image(photos, tmp_path, orientation, turned):
    """A phone photo: pixels as the sensor saw them and an EXIF tag saying how to turn them."""
    from transformers.image_utils import load_image

    path = tmp_path / f"o{orientation}.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    PIL.Image.fromarray(photos["coffee"]).save(path, exif=exif, quality=95)  # 400x600 as stored
    stored = np.array(PIL.Image.open(path))  # (400, 600, 3)
    expected = {"clockwise": np.rot90(stored, -1), "counterclockwise": np.rot90(stored, 1),
                "half": np.rot90(stored, 2), "none": stored}[turned]
    transform = CLIPImageTransform(image_size=224)
    ours = transform(path)
    torch.testing.assert_close(ours, transform(np.ascontiguousarray(expected)), rtol=0, atol=0)
    d = (ours - reference_pixels(224, [load_image(str(path))])).abs()
    assert d.mean() <= MEAN_TOL and d.max() <= MAX_TOL


def test_a_corrupt_exif_block_keeps_the_image(tmp_path):
    path = tmp_path / "bad_exif.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    # an IFD that announces 5 entries and ends: PIL warns "Corrupt EXIF data" and reads no tag
    PIL.Image.fromarray(pixels).save(path, exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05", quality=95)
    transform = CLIPImageTransform(image_size=16)
    with pytest.warns(UserWarning, match="Corrupt EXIF"):
        ours = transform(path)
    torch.testing.assert_close(ours, transform(np.array(PIL.Image.open(path))), rtol=0, atol=0)


@pytest.mark.parametrize("size", [336, 224])
def test_parity_with_clip_image_processor(photos, size, record_property):
    transform = CLIPImageTransform(image_size=size)
    names = list(photos)
    pil = [PIL.Image.fromarray(photos[n]) for n in names]
    ours = transform(pil)  # one call, mixed sizes
    ref = reference_pixels(size, pil)
    assert ours.shape == ref.shape == (len(names), 3, size, size)
    assert ours.dtype == torch.float32
    diffs = {}
    for i, name in enumerate(names):
        d = (ours[i] - ref[i]).abs()
        diffs[name] = (round(d.mean().item(), 5), round(d.max().item(), 4))
    record_property(f"diffs_{size}", json.dumps(diffs))
    print(f"S={size} (mean, max) abs diff:", diffs)
    for name, (mean_diff, max_diff) in diffs.items():
        assert mean_diff <= MEAN_TOL and max_diff <= MAX_TOL, (name, size, mean_diff, max_diff)


def test_video_frames_parity_and_layouts(photos):
    """720p frames as uint8[T, H, W, 3] numpy, [T, H, W, 3] torch and [T, 3, H, W] torch agree with the reference."""
    base = np.asarray(PIL.Image.fromarray(photos["rocket"]).resize((1280, 720), PIL.Image.BICUBIC))
    frames = np.stack([np.roll(base, 40 * i, axis=1) for i in range(4)])  # (4, 720, 1280, 3)
    transform = CLIPImageTransform()
    ours = transform(frames)
    ref = reference_pixels(336, list(frames))
    d = (ours - ref).abs()
    assert ours.shape == (4, 3, 336, 336)
    assert d.mean() <= MEAN_TOL and d.max() <= MAX_TOL, (d.mean().item(), d.max().item())
    thwc = torch.from_numpy(frames)
    assert torch.equal(transform(thwc), ours)
    assert torch.equal(transform(thwc.permute(0, 3, 1, 2).contiguous()), ours)


@pytest.mark.parametrize("name, size", [("coffee", 336), ("chelsea", 336), ("chelsea_tall", 224), ("astronaut", 224)])
def test_resize_kernels_stay_within_one_grey_level_of_pil(photos, name, size):
    """The float kernel (what runs on a GPU) always, and the CPU uint8 kernel when shrinking, match PIL to 1 level.

    chelsea at 336 is an enlargement (300 -> 336), which the default sends through the float kernel.
    """
    image = photos[name]
    h, w = image.shape[:2]
    new_h, new_w = _shortest_edge_size(h, w, size)
    expected = torch.from_numpy(np.array(PIL.Image.fromarray(image).resize((new_w, new_h), PIL.Image.BICUBIC)))
    x = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, H, W)
    kernels = (None, True, False) if new_h <= h else (None, True)
    for via_float in kernels:
        got = resize_uint8(x, (new_h, new_w), via_float=via_float)[0].permute(1, 2, 0)  # (h, w, 3)
        diff = (got.int() - expected.int()).abs()
        assert diff.max() <= 1, (name, size, via_float, diff.max().item())
        assert (diff > 0).float().mean() < 0.01, (name, size, via_float)


# ----- geometry ---------------------------------------------------------------------------------

def test_resize_output_size_rule():
    assert _shortest_edge_size(300, 451, 336) == (336, 505)  # 336 * 451 / 300 = 505.12, truncated
    assert _shortest_edge_size(451, 300, 336) == (505, 336)
    assert _shortest_edge_size(720, 1280, 336) == (336, 597)  # 597.33
    assert _shortest_edge_size(427, 640, 224) == (224, 335)  # 335.7: truncated, not rounded
    assert _shortest_edge_size(512, 512, 336) == (336, 336)


def test_center_crop_offset_is_floor():
    assert _crop_offset(505, 336) == 84  # 84.5 -> 84 (torchvision's CenterCrop would round to 85)
    assert _crop_offset(336, 336) == 0
    # A (4, 7) image whose pixel value is its column index: short side 4 is already S, so there is
    # no resize, and the crop must start at column floor(3 / 2) = 1.
    columns = np.broadcast_to(np.arange(7, dtype=np.uint8)[None, :, None], (4, 7, 3)).copy()
    out = to_uint8(CLIPImageTransform(image_size=4)(columns))
    assert out[0, 0, 0].tolist() == [1, 2, 3, 4]


def test_pad_offsets():
    assert _pad_offsets(2, 4) == (1, 0)  # wide: (W - H) // 2 rows on top
    assert _pad_offsets(3, 6) == (1, 0)  # 1.5 -> 1
    assert _pad_offsets(6, 3) == (0, 1)  # tall
    assert _pad_offsets(5, 5) == (0, 0)


# ----- pad mode ---------------------------------------------------------------------------------

def test_pad_mode_exact_on_a_tiny_image():
    """3x6 image, S = 6: no resize, rows 0, 4, 5 are the fill colour, rows 1..3 the image."""
    image = np.full((3, 6, 3), 9, dtype=np.uint8)
    transform = CLIPImageTransform(image_size=6, mode="pad")
    assert transform.fill == (122, 116, 104)
    out = to_uint8(transform(image))[0].permute(1, 2, 0)  # (6, 6, 3)
    fill = torch.tensor([122, 116, 104], dtype=torch.uint8)
    for row in (0, 4, 5):
        assert torch.equal(out[row], fill.expand(6, 3)), row
    assert torch.all(out[1:4] == 9)
    tall = to_uint8(transform(image.transpose(1, 0, 2).copy()))[0].permute(1, 2, 0)  # (6, 6, 3)
    assert torch.equal(tall[:, 0], fill.expand(6, 3)) and torch.all(tall[:, 1:4] == 9)


@pytest.mark.parametrize("name", ["rocket", "rocket_tall", "chelsea"])
def test_pad_mode_matches_llava_expand2square_then_processor(photos, name):
    image = PIL.Image.fromarray(photos[name])
    w, h = image.size
    side = max(w, h)
    canvas = PIL.Image.new("RGB", (side, side), (122, 116, 104))
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))  # (x, y) as LLaVA's expand2square
    expected = reference_pixels(336, canvas)
    ours = CLIPImageTransform(mode="pad")(image)
    d = (ours - expected).abs()
    assert ours.shape == (1, 3, 336, 336)
    assert d.mean() <= MEAN_TOL and d.max() <= MAX_TOL, (name, d.mean().item(), d.max().item())


# ----- input kinds ------------------------------------------------------------------------------

def test_every_rgb_input_kind_gives_the_same_result(photos, tmp_path):
    image = photos["chelsea"]
    transform = CLIPImageTransform(image_size=224)
    expected = transform(PIL.Image.fromarray(image))
    assert expected.shape == (1, 3, 224, 224)
    path = tmp_path / "chelsea.png"
    PIL.Image.fromarray(image).save(path)
    read_only = image.copy()
    read_only.flags.writeable = False
    for value in (image, read_only, image[None], torch.from_numpy(image), torch.from_numpy(image)[None],
                  torch.from_numpy(image).permute(2, 0, 1)[None], path, str(path), [path]):
        assert torch.equal(transform(value), expected), type(value)


def test_list_of_mixed_sizes_keeps_order(photos):
    transform = CLIPImageTransform(image_size=224)
    items = [photos["coffee"], photos["astronaut"], torch.from_numpy(photos["coffee"][::-1].copy()),
             PIL.Image.fromarray(photos["chelsea_tall"])]
    batch = transform(items)
    assert batch.shape == (4, 3, 224, 224)
    for i, item in enumerate(items):
        assert torch.equal(batch[i:i + 1], transform(item)), i


def test_grey_inputs_repeat_the_channel(photos):
    grey = np.array(PIL.Image.fromarray(photos["coffee"]).convert("L"))  # (H, W)
    transform = CLIPImageTransform(image_size=224)
    expected = transform(np.repeat(grey[..., None], 3, axis=2))
    assert torch.equal(transform(grey), expected)
    assert torch.equal(transform(torch.from_numpy(grey)), expected)
    assert torch.equal(transform(PIL.Image.fromarray(grey, mode="L")), expected)
    assert torch.equal(transform(PIL.Image.fromarray(grey).convert("1").convert("L")),
                      transform(PIL.Image.fromarray(grey).convert("1")))


def test_transparency_is_composited_on_white(photos):
    rgba = np.zeros((100, 150, 4), dtype=np.uint8)
    rgba[..., :3] = photos["coffee"][:100, :150]
    rgba[:, 75:, 3] = 255  # left half fully transparent, right half opaque
    image = PIL.Image.fromarray(rgba, mode="RGBA")
    out = CLIPImageTransform(image_size=100)(image)
    pixels = to_uint8(out)[0]  # (3, 100, 100); crop keeps columns 25..124
    assert torch.all(pixels[:, :, :40] == 255)  # transparent, away from the resize blur at the seam
    reference_out = reference_pixels(100, image)
    # transformers 5.25 composites on white too; 5.20 (the newest for Python 3.10, our lower
    # bound) drops the alpha channel instead, so there the transparent half is not compared.
    if torch.all(to_uint8(reference_out)[0][:, :, :40] == 255):
        d = (out - reference_out).abs()
    else:
        d = (out - reference_out)[..., 60:].abs()  # (1, 3, 100, 40): the opaque half, away from the seam
    assert d.mean() <= MEAN_TOL and d.max() <= MAX_TOL


def test_palette_cmyk_and_sixteen_bit_modes(photos):
    transform = CLIPImageTransform(image_size=224)
    rgb = PIL.Image.fromarray(photos["rocket"])
    palette = rgb.convert("P")
    assert torch.equal(transform(palette), transform(palette.convert("RGB")))
    cmyk = rgb.convert("CMYK")
    assert torch.equal(transform(cmyk), transform(cmyk.convert("RGB")))
    # P with a transparent palette index: that colour becomes white
    palette.info["transparency"] = 0
    expected = np.array(palette.convert("RGB"))
    expected[np.asarray(palette) == 0] = 255
    assert torch.equal(transform(palette), transform(expected))
    # 16-bit grey is scaled to 8 bits (v / 257, rounded), not saturated at 255
    grey8 = np.asarray(rgb.convert("L"))
    grey16 = grey8.astype(np.uint16) * 257
    image16 = PIL.Image.fromarray(grey16)
    assert image16.mode == "I;16"
    assert torch.equal(transform(image16), transform(grey8))


def test_from_processor_config(tmp_path):
    # the facts of openai/clip-vit-large-patch14-336's preprocessor_config.json
    config = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
              "image_std": list(CLIP_STD), "resample": 3, "size": 336}
    t = CLIPImageTransform.from_processor_config(config)
    assert (t.image_size, t.mean, t.std, t.mode) == (336, CLIP_MEAN, CLIP_STD, "crop")
    newer = dict(config, crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224},
                 image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(newer))
    for source in (tmp_path, tmp_path / "preprocessor_config.json", str(tmp_path)):
        t = CLIPImageTransform.from_processor_config(source, mode="pad")
        assert (t.image_size, t.mean, t.std, t.mode) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "pad")
    with pytest.raises(ValueError, match="256"):
        CLIPImageTransform.from_processor_config(dict(config, size={"shortest_edge": 256}, crop_size=224))
    with pytest.raises(ValueError, match="height"):
        CLIPImageTransform.from_processor_config(dict(config, crop_size={"height": 224, "width": 336}))
    with pytest.raises(ValueError, match="longest_edge"):
        CLIPImageTransform.from_processor_config(dict(config, size={"shortest_edge": 336, "longest_edge": 600}))
    with pytest.raises(ValueError, match="resample=2"):
        CLIPImageTransform.from_processor_config(dict(config, resample=2))
    with pytest.raises(FileNotFoundError):
        CLIPImageTransform.from_processor_config(tmp_path / "missing")


# ----- bad input --------------------------------------------------------------------------------

def test_bad_files(tmp_path, monkeypatch):
    transform = CLIPImageTransform()
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        transform(text)
    truncated = tmp_path / "cut.png"
    PIL.Image.fromarray(skdata.astronaut()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.png"):
        transform(truncated)
    with pytest.raises(FileNotFoundError, match="absent.png"):
        transform(tmp_path / "absent.png")
    bomb = tmp_path / "bomb.png"
    PIL.Image.new("RGB", (40, 40)).save(bomb)  # 1600 pixels
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above 1000, refuses above 2000
    with pytest.raises(ValueError, match="decompression-bomb"):
        transform(bomb)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match="decompression-bomb"):
        transform(bomb)


@pytest.mark.parametrize("value, error, words", [
    (torch.zeros(8, 8, 3), TypeError, "torch.float32"),
    (np.zeros((8, 8, 3), np.int16), TypeError, "int16"),
    (np.zeros((8, 8, 3), np.uint16), TypeError, "uint16"),
    (np.zeros((8, 8, 5), np.uint8), ValueError, r"\[8, 8, 5\]"),
    (torch.zeros(2, 2, 8, 8, 3, dtype=torch.uint8), ValueError, r"\[2, 2, 8, 8, 3\]"),
    (torch.zeros(8, dtype=torch.uint8), ValueError, r"\[8\]"),
    (np.zeros((0, 8, 3), np.uint8), ValueError, "no pixels"),
    (torch.zeros(0, 8, 8, 3, dtype=torch.uint8), ValueError, "no pixels"),
    (PIL.Image.new("RGB", (0, 0)), ValueError, "empty image"),
    (PIL.Image.new("RGB", (5, 0)), ValueError, "height=0"),
    (PIL.Image.new("F", (8, 8)), ValueError, "'F'"),
    ([], ValueError, "empty list"),
    ([[np.zeros((8, 8, 3), np.uint8)]], TypeError, "nested list"),
    (42, TypeError, "int"),
    ({"pixels": 1}, TypeError, "dict"),
])
def test_bad_values_name_what_was_received_and_accepted(value, error, words):
    with pytest.raises(error, match=words) as info:
        CLIPImageTransform()(value)
    message = str(info.value)
    assert "expected" in message or "needs" in message or "convert" in message, message


@pytest.mark.parametrize("kwargs, words", [
    ({"mode": "square"}, "square"),
    ({"image_size": 0}, "image_size"),
    ({"image_size": 33.6}, "33.6"),
    ({"mean": (0.5, 0.5)}, "mean"),
    ({"std": (0.5, 0.0, 0.5)}, "std"),
])
def test_bad_constructor_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        CLIPImageTransform(**kwargs)


def test_attributes_and_repr():
    t = CLIPImageTransform(image_size=224, mode="pad")
    assert (t.image_size, t.mean, t.std, t.mode) == (224, CLIP_MEAN, CLIP_STD, "pad")
    assert "image_size=224" in repr(t) and "'pad'" in repr(t)


@pytest.mark.slow
def test_preprocess_benchmark_runs(tmp_path):
    """benchmarks/bench_preprocess.py end to end on a tiny workload, in a fresh interpreter."""
    root = pathlib.Path(__file__).resolve().parents[3]
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "bench_preprocess.py"), "--frames", "3", "--height", "72",
                    "--width", "128", "--size", "32", "--runs", "1", "--json", str(out)],
                   check=True, cwd=root, capture_output=True, text=True,
                   env={**os.environ, "PYTHONPATH": str(root)})
    result = json.loads(out.read_text())
    assert result["frames"] == [3, 72, 128, 3] and result["size"] == 32
    assert result["max_abs_diff"] <= MAX_TOL and result["ours_ms"] > 0 and result["reference_ms"] > 0
