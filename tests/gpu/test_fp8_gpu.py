"""`tower.to_fp8()` on the GPU (FP8 tensor cores: compute capability 8.9 and up, e.g. H100/H200).

Its features against the same tower in bfloat16: each token's cosine similarity at least 0.99 and
their mean at least 0.995. FP8 keeps 3 mantissa bits; on the CPU, ViT-L/14@336 with random weights
measured min 0.99928, mean 0.99943 (benchmarks/RESULTS.md), and the tiny CPU tower of
`tests/gpu/devices.py` (larger random weights) min 0.9971, mean 0.9983. A wrong scale or a dropped
bias lands far below.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.gpu.devices import DEVICE, ON_CUDA, compare, tower_batch, tower_config
from vlm_vision import CLIPVisionTower
from vlm_vision.model.fp8 import FP8Linear

pytestmark = pytest.mark.gpu


def fp8_capable() -> bool:
    return not ON_CUDA or torch.cuda.get_device_capability(DEVICE) >= (8, 9)


@pytest.mark.skipif(ON_CUDA and torch.cuda.is_available() and not fp8_capable(),
                    reason="FP8 matmuls need compute capability 8.9 or newer")
def test_fp8_tower_runs_and_stays_close_to_bf16():
    torch.manual_seed(0)
    with DEVICE:  # random weights made where they are used
        tower = CLIPVisionTower.from_config(tower_config()).to(torch.bfloat16)
    fp8 = copy.deepcopy(tower).to_fp8()
    assert fp8.is_fp8 and sum(isinstance(m, FP8Linear) for m in fp8.modules()) == 4 * len(fp8.blocks)
    s = tower.image_size
    x = torch.randn(tower_batch(), 3, s, s, generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.bfloat16)
    out, ref = fp8(x), tower(x)
    assert out.device.type == DEVICE.type and out.dtype == torch.bfloat16
    stats = compare("tower FP8 vs bf16", out, ref)
    assert stats["min_cos"] >= 0.99 and stats["mean_cos"] >= 0.995, stats
    assert stats["max_abs"] > 0, "FP8 gave the bfloat16 features bit for bit: the FP8 path did not run"
