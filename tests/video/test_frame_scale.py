"""Frames resized in the decoder process (`video.frame_scale`): the geometry by hand, the same
pixels as resizing afterwards (bundled videos, noise, fine texture), colour, orientation and
timing unchanged, and what the tower sees: the issue's bound is 2 grey levels (mean 0.5) and
token cosine 0.999 from the full-resolution path; on the CPU the pixels are in fact identical.

Shapes: T frames, H/W pixels, S the transform's side.
"""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import Colorspace
from transformers import CLIPVisionConfig

from tests.video.synth import make_numbered_video
from video import FrameScale, load_video
from video.frame_resize import resize_frame
from video.frame_scale import pad_offsets, scale_label, shortest_edge_size
from video.provenance import differences
from vlm_vision import CLIPVisionTower
from vlm_vision.model.transforms import CLIPImageTransform

BUNDLED = ("box.mp4", "cockatoo.mp4", "cup.mp4", "realshort.mp4")


# ----- geometry (pure) --------------------------------------------------------------------------

def test_shortest_edge_and_pad_rules_by_hand():
    assert shortest_edge_size(720, 1280, 336) == (336, 597)  # 597.33 truncated, transformers' rule
    assert shortest_edge_size(1280, 720, 336) == (597, 336)
    assert shortest_edge_size(2160, 3840, 336) == (336, 597)
    assert pad_offsets(48, 64) == (8, 0) and pad_offsets(64, 48) == (0, 8)


def test_wire_round_trip_labels_and_refusals():
    scale = CLIPImageTransform(336, mode="pad").frame_scale()
    assert scale == FrameScale(336, "pad", (122, 116, 104))
    assert FrameScale.from_wire(scale.to_wire()) == scale and FrameScale.from_wire(None) is None
    assert scale_label(scale) == "pad:336" and scale_label(None) == "full"
    with pytest.raises(ValueError, match="size"):
        FrameScale(0)
    with pytest.raises(ValueError, match="mode"):
        FrameScale(336, "stretch")
    with pytest.raises(ValueError, match="frame_scale"):
        load_video("tests/data/realshort.mp4", num_frames=2, frame_scale=336)


def test_provenance_tells_scaled_from_full_and_old_files_are_full():
    assert differences({}, {"frame_scale": "full"}) == {}  # written before the setting: full resolution
    assert differences({}, {"frame_scale": "crop:336"}) == {"frame_scale": ("full", "crop:336")}
    assert differences({"frame_scale": "crop:336"}, {"frame_scale": "full"}) == {"frame_scale": ("crop:336", "full")}
    assert differences({"frame_scale": "crop:336"}, {"frame_scale": "crop:224"})


# ----- the decoder process does exactly the transform's resize ------------------------------------

def _same_as_resizing_afterwards(path, scale: FrameScale, **kwargs) -> tuple:
    """Both clips, after asserting: resized in the decoder == `resize_frame` of the full frames."""
    full = load_video(path, num_frames=6, **kwargs)
    scaled = load_video(path, num_frames=6, frame_scale=scale, **kwargs)
    expected = np.stack([resize_frame(f, scale) for f in full.frames.numpy()])  # (T, h, w, 3)
    assert np.array_equal(scaled.frames.numpy(), expected)
    assert scaled.indices == full.indices and scaled.timestamps == full.timestamps
    assert scaled.presentation_times == full.presentation_times
    assert full.frame_scale == "full" and scaled.frame_scale == scale_label(scale)
    return full, scaled


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_videos_resized_in_the_decoder_as_afterwards(data_dir, name):
    for scale in (FrameScale(112), FrameScale(112, "pad", (122, 116, 104))):
        _same_as_resizing_afterwards(data_dir / name, scale)
    _same_as_resizing_afterwards(data_dir / name, FrameScale(112), sampling="keyframe")


def test_decord_backend_resized_in_the_decoder_too(data_dir):
    _same_as_resizing_afterwards(data_dir / "realshort.mp4", FrameScale(100), backend="decord")


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_applies_before_the_resize(tmp_path, rotation):
    """Upright first, then the transform's geometry: a portrait video's short side is its width."""
    path = make_numbered_video(tmp_path / f"rot{rotation}.mp4", 12, size=(96, 64), gop=4, rotation=rotation)
    full, scaled = _same_as_resizing_afterwards(path, FrameScale(32))
    assert scaled.frames.shape[1:] == ((48, 32, 3) if rotation % 180 else (32, 48, 3))


def test_variable_frame_rate_times_unchanged(tmp_path):
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 0.9, 1.0, 1.3]
    path = make_numbered_video(tmp_path / "vfr.mp4", 8, size=(96, 64), timestamps=times)
    full, scaled = _same_as_resizing_afterwards(path, FrameScale(32))
    assert scaled.presentation_times == pytest.approx([times[i] for i in scaled.indices])


# ----- what the tower sees: within 2 grey levels, tokens within cosine 0.999 ------------------------

def _write(path, frames: list[np.ndarray], pix_fmt: str = "yuv444p", crf: int = 0) -> None:
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(10), options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def _noise_video(path) -> None:
    rng = np.random.default_rng(0)
    _write(path, [rng.integers(0, 256, (540, 960, 3), dtype=np.uint8) for _ in range(4)])


def _texture_video(path) -> None:
    """Gratings of 2-9 pixel periods at several angles, a 1-pixel checkerboard and thin stripes."""
    yy, xx = np.mgrid[0:540, 0:960].astype(np.float32)
    frames = []
    for k in range(4):
        angle = 0.3 + 0.4 * k
        u = xx * np.cos(angle) + yy * np.sin(angle)
        period = 2.0 + 2.0 * (xx / 960) * (k + 1) + 3.0 * (yy / 540)
        grating = 127.5 + 127.5 * np.sin(2 * np.pi * u / period)
        checker = ((xx.astype(int) + yy.astype(int) + k) % 2) * 255.0
        stripes = ((xx.astype(int) // (1 + k)) % 2) * 255.0
        image = np.stack([grating, np.where(yy < 270, checker, grating), np.where(xx < 480, stripes, grating)], -1)
        frames.append(image.clip(0, 255).astype(np.uint8))
    _write(path, frames)


def _tower_pixels(transform: CLIPImageTransform, frames: torch.Tensor) -> torch.Tensor:
    """The transform's uint8 squares, before normalising: uint8[T, 3, S, S]."""
    return transform._square_all([frames.permute(0, 3, 1, 2)])  # (T, 3, S, S)


def _compare(path, transform: CLIPImageTransform, tower: CLIPVisionTower | None = None) -> tuple[float, float]:
    full = load_video(path, num_frames=4)
    scaled = load_video(path, num_frames=4, frame_scale=transform.frame_scale())
    a = _tower_pixels(transform, full.frames).int()
    b = _tower_pixels(transform, scaled.frames).int()
    diff = (a - b).abs().float()
    if tower is not None:
        with torch.no_grad():
            ta, tb = tower(transform(full.frames)), tower(transform(scaled.frames))  # (T, N, D)
        cosine = torch.nn.functional.cosine_similarity(ta, tb, dim=-1).mean().item()
        assert cosine >= 0.999, (path.name, cosine)
    return diff.max().item(), diff.mean().item()


@pytest.fixture(scope="module")
def tower_112() -> CLIPVisionTower:
    torch.manual_seed(0)
    return CLIPVisionTower.from_config(CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=112,
        patch_size=14, hidden_act="quick_gelu")).eval()


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_videos_tower_pixels_within_two_levels(data_dir, name, tower_112):
    for transform in (CLIPImageTransform(112), CLIPImageTransform(112, mode="pad"), CLIPImageTransform(336)):
        worst, mean = _compare(data_dir / name, transform, tower_112 if transform.image_size == 112 else None)
        assert worst <= 2 and mean < 0.5, (name, transform, worst, mean)
        assert worst == 0, (name, transform, worst)  # the transform's own resize, run in the decoder process


@pytest.mark.parametrize("make", [_noise_video, _texture_video], ids=["noise", "texture"])
def test_fine_detail_tower_pixels_within_two_levels(tmp_path, make, tower_112):
    path = tmp_path / f"{make.__name__}.mp4"
    make(path)
    for transform in (CLIPImageTransform(112), CLIPImageTransform(112, mode="pad"), CLIPImageTransform(224)):
        worst, mean = _compare(path, transform, tower_112 if transform.image_size == 112 else None)
        assert worst <= 2 and mean < 0.5, (make.__name__, transform, worst, mean)
        assert worst == 0, (make.__name__, transform, worst)


# ----- colour: BT.709 and BT.601 limited range, full-range MJPEG -------------------------------------

PATCHES = [(200, 30, 30), (30, 200, 40), (40, 50, 210), (230, 220, 40), (128, 128, 128), (20, 180, 190)]
COLOUR_FILES = {  # name: (codec, pix_fmt, swscale matrix, AVColorSpace tag, AVColorRange tag)
    "bt709_limited.mp4": ("libx264", "yuv420p", Colorspace.ITU709, 1, 1),
    "bt601_limited.mp4": ("libx264", "yuv420p", Colorspace.ITU601, 6, 1),
    "full_range.avi": ("mjpeg", "yuvj420p", Colorspace.ITU601, 5, 2),
}


def _patches() -> np.ndarray:
    image = np.zeros((96, 144, 3), np.uint8)  # two rows of three 48x48 patches
    for k, colour in enumerate(PATCHES):
        r, c = divmod(k, 3)
        image[r * 48:(r + 1) * 48, c * 48:(c + 1) * 48] = colour
    return image


def _colour_file(path, codec: str, pix_fmt: str, matrix: int, space: int, colour_range: int) -> None:
    """Patches converted to YUV with `matrix` and `colour_range`, and the stream tagged so."""
    with av.open(str(path), "w") as container:
        options = {"crf": "10"} if codec == "libx264" else {"qscale": "2"}
        stream = container.add_stream(codec, rate=10, options=options)
        stream.width, stream.height, stream.pix_fmt = 144, 96, pix_fmt
        stream.codec_context.colorspace, stream.codec_context.color_range = space, colour_range
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(_patches(), format="rgb24")
            container.mux(stream.encode(frame.reformat(format=pix_fmt, dst_colorspace=matrix,
                                                       dst_color_range=colour_range)))
        container.mux(stream.encode(None))


def _patch_centres(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    return np.array([frame[int((r + 0.5) * h / 2), int((c + 0.5) * w / 3)] for r in range(2) for c in range(3)])


@pytest.mark.parametrize("name", list(COLOUR_FILES))
def test_colour_patches_match_the_source_on_both_paths(tmp_path, name):
    codec, pix_fmt, matrix, space, colour_range = COLOUR_FILES[name]
    path = tmp_path / name
    _colour_file(path, codec, pix_fmt, matrix, space, colour_range)
    with av.open(str(path)) as container:  # the file says what it holds
        frame = next(container.decode(video=0))
        assert (int(frame.colorspace), int(frame.color_range)) == (space, colour_range)
        # the check can fail: read with the other matrix, the same file is far off
        other = Colorspace.ITU601 if matrix == Colorspace.ITU709 else Colorspace.ITU709
        wrong = _patch_centres(frame.reformat(format="rgb24", src_colorspace=other).to_ndarray()).astype(int)
        assert np.abs(wrong - np.array(PATCHES)).max() > 8
    for scale in (None, FrameScale(32), FrameScale(60)):
        frames = load_video(path, num_frames=2, frame_scale=scale).frames.numpy()
        for frame in frames:
            assert np.abs(_patch_centres(frame).astype(int) - np.array(PATCHES)).max() <= 3, (name, scale)
