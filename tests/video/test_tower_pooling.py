"""tower -> pool, written once: each frame through the tower, its 4x4 patch grid averaged 2x2 by hand."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig

from video.tower_pooling import check_tower_pooling, encode_frames, encode_pixels
from vlm_vision import CLIPVisionTower

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
            patch_size=7)  # 4x4 patch grid


@pytest.fixture(scope="module")
def tower() -> CLIPVisionTower:
    torch.manual_seed(0)
    return CLIPVisionTower.from_config(CLIPVisionConfig(**TINY))


def test_average_pooling_is_the_mean_of_each_2x2_block(tower):
    pixels = torch.randn(3, 3, 28, 28)
    tokens = tower(pixels).unflatten(1, (4, 4))  # (3, 4, 4, 32): rows, columns of the patch grid
    expected = torch.stack([tokens[:, r:r + 2, c:c + 2].mean(dim=(1, 2)) for r in (0, 2) for c in (0, 2)], dim=1)
    torch.testing.assert_close(encode_pixels(tower, pixels, stride=2, mode="average"), expected)  # (3, 4, 32)


def test_the_batch_size_changes_nothing_and_frames_are_preprocessed_by_the_tower(tower):
    frames = torch.randint(0, 256, (5, 40, 52, 3), dtype=torch.uint8)
    whole = encode_pixels(tower, tower.image_transform(frames), stride=2, mode="average")  # (5, 4, 32)
    for batch_size in (1, 2, None):
        torch.testing.assert_close(encode_frames(tower, frames, stride=2, mode="average", batch_size=batch_size),
                                   whole, rtol=1e-5, atol=1e-6)


def test_a_pooling_the_tower_cannot_take_is_refused_before_any_frame_runs(tower):
    with pytest.raises(ValueError, match="stride 3 does not divide the tower's 4x4 patch grid"):
        check_tower_pooling(tower, 3, "average")
    assert encode_pixels(tower, torch.zeros(1, 3, 28, 28), stride=3, mode="bilinear").shape == (1, 4, 32)  # 2x2
    with_cls = CLIPVisionTower.from_config(CLIPVisionConfig(**TINY), select_feature="cls_patch")
    with pytest.raises(ValueError, match="keeps the CLS token"):
        encode_pixels(with_cls, torch.zeros(1, 3, 28, 28), stride=2, mode="average")
