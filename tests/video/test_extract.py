"""extract_video_tokens and the video-tokens file format, with a tiny random tower on real video."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from video import VideoTokens, extract_video_tokens, load_video, load_video_tokens, save_video_tokens, spatial_pool
from video.extract import read_token_header
from vlm_vision import CLIPVisionTower

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
            patch_size=7)  # 4x4 patch grid, pooled 2x2


@pytest.fixture
def tower() -> CLIPVisionTower:
    return CLIPVisionTower.from_config(CLIPVisionConfig(**TINY))


@pytest.fixture
def realshort(data_dir) -> pathlib.Path:
    return data_dir / "realshort.mp4"


def test_tokens_are_tower_then_pool_on_the_sampled_frames(tower, realshort):
    clip = load_video(realshort, num_frames=6)
    pixels = tower.image_transform(clip.frames)  # (6, 3, 28, 28)
    expected = spatial_pool(tower(pixels), grid=(4, 4), stride=2, mode="average")  # (6, 4, 32)

    from_clip = extract_video_tokens(clip, tower, pool_stride=2)
    full = extract_video_tokens(realshort, tower, num_frames=6, pool_stride=2, full_resolution_frames=True)
    from_path = extract_video_tokens(realshort, tower, num_frames=6, pool_stride=2)
    # by default the decoder process resizes the frames for the tower (video.frame_scale)
    scaled = load_video(realshort, num_frames=6, frame_scale=tower.image_transform.frame_scale())
    assert scaled.frames.shape[1:] == (28, 37, 3) and scaled.frame_scale == "crop:28"

    assert from_clip.tokens.shape == (6, 4, 32)
    assert torch.equal(from_clip.tokens, expected)
    assert torch.equal(full.tokens, expected) and full.frame_scale == "full"
    assert torch.equal(from_path.tokens, spatial_pool(tower(tower.image_transform(scaled.frames)), grid=(4, 4),
                                                      stride=2, mode="average"))
    assert from_path.frame_scale == "crop:28"
    assert from_path.indices == list(clip.indices)
    assert from_path.timestamps == pytest.approx(list(clip.timestamps))
    assert from_path.grid == (4, 4) and from_path.pooled_grid == (2, 2)
    assert from_path.layer == -2 and from_path.path == str(realshort)


def test_matches_the_transformers_pipeline(realshort):
    """CLIPVisionModel hidden_states[-2][:, 1:] + 2x2 average pooling on the same frames."""
    reference = CLIPVisionModel(CLIPVisionConfig(**TINY)).eval()
    tower = CLIPVisionTower.from_transformers(reference)
    clip = load_video(realshort, num_frames=4)
    pixels = tower.image_transform(clip.frames)  # (4, 3, 28, 28)
    with torch.no_grad():
        hidden = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # (4, 16, 32)
    grid = hidden.transpose(1, 2).reshape(4, 32, 4, 4)  # (T, D, 4, 4)
    expected = torch.nn.functional.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # (T, 4, D)

    got = extract_video_tokens(clip, tower).tokens
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, stride, n", [("max", 2, 4), ("average", 1, 16), ("bilinear", 3, 4)])
def test_pool_settings_reach_the_tokens(tower, realshort, mode, stride, n):
    clip = load_video(realshort, num_frames=2)
    got = extract_video_tokens(clip, tower, pool_stride=stride, pool_mode=mode)
    assert got.tokens.shape == (2, n, 32)
    assert got.pooled_grid[0] * got.pooled_grid[1] == n
    expected = spatial_pool(tower(tower.image_transform(clip.frames)), grid=(4, 4), stride=stride, mode=mode)
    assert torch.equal(got.tokens, expected)


def test_batch_size_does_not_change_the_tokens(tower, realshort):
    clip = load_video(realshort, num_frames=5)
    whole = extract_video_tokens(clip, tower).tokens
    batched = extract_video_tokens(clip, tower, batch_size=2).tokens
    torch.testing.assert_close(batched, whole, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused(tower, realshort):
    with pytest.raises(ValueError, match="batch_size"):
        extract_video_tokens(realshort, tower, batch_size=0)
    with pytest.raises(TypeError, match="path or a VideoClip"):
        extract_video_tokens(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), tower)
    with pytest.raises(ValueError, match="stride 3 does not divide the tower's 4x4"):
        extract_video_tokens(realshort, tower, pool_stride=3)
    with pytest.raises(ValueError, match="pool_mode"):
        extract_video_tokens(realshort, tower, pool_mode="mean")
    cls_tower = CLIPVisionTower.from_config(CLIPVisionConfig(**TINY), select_feature="cls_patch")
    with pytest.raises(ValueError, match="CLS"):
        extract_video_tokens(realshort, cls_tower, num_frames=2)


def test_save_and_load_round_trip(tower, realshort, tmp_path):
    vt = extract_video_tokens(realshort, tower.to(torch.bfloat16), num_frames=3, model="tiny", random_weights=True)
    assert vt.tokens.dtype == torch.bfloat16
    path = save_video_tokens(vt, tmp_path / "clip.safetensors", extra={"num_frames": 3})
    back = load_video_tokens(path)

    assert torch.equal(back.tokens, vt.tokens)
    for field in ("indices", "timestamps", "native_fps", "num_total_frames", "duration", "path", "grid",
                  "pooled_grid", "pool_stride", "pool_mode", "model", "layer", "random_weights", "sampling",
                  "timestamp_shift", "presentation_times", "backend"):
        assert getattr(back, field) == getattr(vt, field), field
    assert vt.presentation_times == pytest.approx(vt.timestamps, abs=1e-3)  # realshort: constant rate
    meta = read_token_header(path).metadata
    assert meta["random_weights"] is True and meta["model"] == "tiny" and meta["num_frames"] == 3
    assert os.listdir(tmp_path) == ["clip.safetensors"]  # no temporary file left behind


def test_extra_metadata_may_not_shadow_a_field(tower, realshort, tmp_path):
    vt = extract_video_tokens(realshort, tower, num_frames=2)
    with pytest.raises(ValueError, match="model"):
        save_video_tokens(vt, tmp_path / "x.safetensors", extra={"model": "other"})
    assert not (tmp_path / "x.safetensors").exists()


def test_loading_a_foreign_safetensors_file_is_an_error(tmp_path):
    save_file({"tokens": torch.zeros(2, 4, 8)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a video-tokens file"):
        load_video_tokens(tmp_path / "other.safetensors")


def test_the_header_reader_gives_the_shape_and_refuses_what_is_not_a_token_file(tmp_path):
    save_file({"tokens": torch.zeros(2, 4, 8)}, tmp_path / "other.safetensors")
    header = read_token_header(tmp_path / "other.safetensors", require_format=False)
    assert header.shape == (2, 4, 8) and header.metadata == {}
    with pytest.raises(ValueError, match="not a video-tokens file"):
        read_token_header(tmp_path / "other.safetensors")
    save_file({"features": torch.zeros(2, 4, 8)}, tmp_path / "keys.safetensors")
    with pytest.raises(ValueError, match=r"has no 'tokens' tensor \(keys: \['features'\]\)"):
        read_token_header(tmp_path / "keys.safetensors", require_format=False)


def test_video_tokens_is_exported():
    import video

    for name in ("VideoTokens", "extract_video_tokens", "save_video_tokens", "load_video_tokens"):
        assert name in video.__all__
    assert VideoTokens.__doc__


def test_decord_backend_reaches_load_video_and_the_file(tower, realshort, tmp_path):
    clip = load_video(realshort, num_frames=4, backend="decord")
    tokens = extract_video_tokens(realshort, tower, num_frames=4, backend="decord", full_resolution_frames=True)
    expected = spatial_pool(tower(tower.image_transform(clip.frames)), grid=(4, 4), stride=2, mode="average")
    assert tokens.backend == "decord" and torch.equal(tokens.tokens, expected)
    assert extract_video_tokens(clip, tower).backend == "decord"  # a decoded clip says how it was decoded
    assert extract_video_tokens(realshort, tower, num_frames=4).backend == "exact"
    save_video_tokens(tokens, tmp_path / "t.safetensors")
    assert read_token_header(tmp_path / "t.safetensors").metadata["backend"] == "decord"
    assert load_video_tokens(tmp_path / "t.safetensors").backend == "decord"
