"""The opt-in FP8 path: row-wise quantisation by hand, FP8Linear against nn.Linear, the tower's
features against its bfloat16 features, and the refusals. `torch._scaled_mm` runs on the CPU too."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig

from vlm_vision import CLIPVisionTower
from vlm_vision.model.fp8 import FP8, FP8Linear, quantize_rowwise, to_fp8


def tiny_tower(hidden_size: int = 64, intermediate_size: int = 128) -> CLIPVisionTower:
    """2 of 3 blocks run, width 64 (q/k/v 192, MLP 128): every width a multiple of 16."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=3,
                              num_attention_heads=4, image_size=32, patch_size=8)
    tower = CLIPVisionTower.from_config(config)
    with torch.no_grad():  # non-zero biases, so a dropped bias shows
        for block in tower.blocks:
            for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                lin.bias.normal_(std=0.1)
    return tower.to(torch.bfloat16)


def test_quantize_rowwise_by_hand():
    # Row maxima 2 and 0.5 map to 448; 1 -> 224 and 0.25 -> 224 are exact in e4m3 (1.75 * 2^7).
    x = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    q, scale = quantize_rowwise(x)
    assert q.dtype == FP8 and scale.dtype == torch.float32
    assert scale.shape == (2, 1)
    torch.testing.assert_close(scale, torch.tensor([[2 / 448], [0.5 / 448]]))
    assert q.float().tolist() == [[224.0, -448.0], [448.0, 224.0]]
    torch.testing.assert_close(q.float() * scale, x)


def test_quantize_rowwise_zero_row_and_rounding():
    q, scale = quantize_rowwise(torch.zeros(1, 4))
    assert torch.all(q.float() == 0) and torch.all(scale > 0)
    x = torch.randn(64, 256)
    q, scale = quantize_rowwise(x)
    rel = ((q.float() * scale - x).abs() / x.abs().amax(dim=1, keepdim=True)).max()
    assert rel <= 1 / 16  # e4m3 keeps 3 mantissa bits: half an ulp is at most 1/16 of the row max
    with pytest.raises(ValueError, match=r"2-D tensor, got shape \(2, 3, 4\)"):
        quantize_rowwise(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("rows", [16, 7, 2 * 17])  # 7 and 34 are padded to a multiple of 16 inside
def test_fp8_linear_matches_linear(rows):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48).to(torch.bfloat16)
    with torch.no_grad():
        linear.bias.normal_()
    fp8 = FP8Linear(linear)
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    y, ref = fp8(x), linear(x)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    rel = (y.float() - ref.float()).norm() / ref.float().norm()
    assert rel < 0.05, rel
    # Without the bias the output would be off by it: the bias is applied exactly once.
    no_bias = (y.float() - linear.bias.float() - ref.float()).norm() / ref.float().norm()
    assert no_bias > 5 * rel
    # Leading dimensions are kept.
    assert fp8(x.view(1, rows, 64)).shape == (1, rows, 48)


def test_fp8_linear_refusals():
    with pytest.raises(ValueError, match="multiples of 16; this Linear is 24 -> 48"):
        FP8Linear(nn.Linear(24, 48))
    fp8 = FP8Linear(nn.Linear(32, 16))
    with pytest.raises(ValueError, match=r"width 32, got shape \(2, 16\)"):
        fp8(torch.zeros(2, 16, dtype=torch.bfloat16))
    fp8.float()  # a later cast turns the stored FP8 weight into float32
    with pytest.raises(TypeError, match="cast after to_fp8"):
        fp8(torch.zeros(2, 32))


def test_tower_fp8_features_close_to_bf16():
    tower = tiny_tower()
    pixels = torch.randn(3, 3, 32, 32)
    ref = tower(pixels).float()  # (3, 16, 64)
    assert not tower.is_fp8
    assert tower.to_fp8() is tower
    assert tower.is_fp8
    swapped = [m for m in tower.modules() if isinstance(m, FP8Linear)]
    assert len(swapped) == 4 * len(tower.blocks)
    assert not any(type(m) is nn.Linear for m in tower.blocks.modules())
    out = tower(pixels)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1)  # (3, 16)
    assert cos.min() > 0.99, cos.min()
    assert (out.float() - ref).abs().max() > 0  # it really ran another path
    # Converting twice changes nothing.
    to_fp8(tower)
    torch.testing.assert_close(tower(pixels), out, rtol=0, atol=0)


def test_tower_fp8_refusals():
    with pytest.raises(ValueError, match="needs a bfloat16 tower, this one is torch.float32"):
        tiny_tower().float().to_fp8()
    with pytest.raises(ValueError, match="freeze the tower first"):
        tiny_tower().unfreeze().to_fp8()
    with pytest.raises(ValueError, match="multiples of 16; this Linear is 40 -> 120"):
        tiny_tower(hidden_size=40, intermediate_size=80).to_fp8()
    tower = tiny_tower().to_fp8()
    with pytest.raises(ValueError, match="inference only"):
        tower.unfreeze()
