"""The tower on the GPU against transformers' CLIPVisionModel on the same GPU, same weights.

bfloat16: both run in bfloat16, so each rounds differently (our fused q/k/v is one matmul, theirs
three; kernels may be picked per shape). The features must still agree to a mean token cosine of
at least 0.9999 and a largest difference of at most 1/16 of the largest feature (8 bfloat16 steps
at that magnitude). float32 (TF32 off): within 1e-4. Compiled (`tower.compile()`, and CUDA graphs
through `mode="reduce-overhead"`): the eager features within the same bfloat16 bounds.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CLIPVisionModel

from tests.gpu.devices import DEVICE, ON_CUDA, compare, tower_batch, tower_config
from vlm_vision import CLIPVisionTower

pytestmark = pytest.mark.gpu

BF16_MIN_MEAN_COSINE = 0.9999
BF16_MAX_ABS = 1 / 16  # times the largest |feature| of the reference
FP32_MAX_ABS = 1e-4


@pytest.fixture(scope="module")
def hf_fp32() -> CLIPVisionModel:
    """The reference with random weights, float32, made on the device (fast); each test copies it."""
    torch.manual_seed(0)
    with DEVICE:
        return CLIPVisionModel(tower_config()).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    s = tower_config().image_size
    return torch.randn(tower_batch(), 3, s, s, generator=torch.Generator().manual_seed(1))  # (B, 3, S, S)


@pytest.fixture
def no_tf32():
    """float32 means float32: no TF32 in matmuls or convolutions while the test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def reference_features(hf: CLIPVisionModel, pixels: torch.Tensor) -> torch.Tensor:
    """What LLaVA takes: every hidden state kept, layer -2, CLS dropped; float[B, N, D]."""
    with torch.no_grad():
        return hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]


def tower_from(hf: CLIPVisionModel) -> CLIPVisionTower:
    """Our tower with `hf`'s weights, built on the device (no random initialisation on the CPU first)."""
    with DEVICE:
        return CLIPVisionTower.from_transformers(hf)


def assert_bf16_close(stats: dict[str, float]) -> None:
    assert stats["mean_cos"] >= BF16_MIN_MEAN_COSINE, stats
    assert stats["max_abs"] <= BF16_MAX_ABS * stats["scale"], stats


def test_bf16_tower_matches_clip_vision_model_bf16(hf_fp32, pixels):
    hf = copy.deepcopy(hf_fp32).to(device=DEVICE, dtype=torch.bfloat16)
    tower = tower_from(hf)
    assert (tower.device.type, tower.dtype) == (DEVICE.type, torch.bfloat16)
    x = pixels.to(device=DEVICE, dtype=torch.bfloat16)
    out, ref = tower(x), reference_features(hf, x)
    assert out.device.type == DEVICE.type and out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert_bf16_close(compare("tower bf16 vs CLIPVisionModel bf16", out, ref))


def test_fp32_tower_matches_clip_vision_model_fp32(hf_fp32, pixels, no_tf32):
    hf = copy.deepcopy(hf_fp32).to(DEVICE)
    tower = tower_from(hf)
    x = pixels.to(DEVICE)
    stats = compare("tower fp32 vs CLIPVisionModel fp32", tower(x), reference_features(hf, x))
    assert stats["max_abs"] <= FP32_MAX_ABS, stats


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])  # reduce-overhead: CUDA graphs
def test_compiled_tower_matches_eager(hf_fp32, pixels, mode):
    tower = tower_from(copy.deepcopy(hf_fp32).to(device=DEVICE, dtype=torch.bfloat16))
    x = pixels.to(device=DEVICE, dtype=torch.bfloat16)
    eager = tower(x).clone()
    torch._dynamo.reset()
    counters.clear()
    assert tower.compile(mode=mode) is tower
    # Three calls: CUDA graphs are recorded on a later call than the first, then replayed; a replay
    # writes into the same output buffer, so each result is copied before the next call.
    outs = [tower(x).clone() for _ in range(3)]
    for i, out in enumerate(outs):
        assert_bf16_close(compare(f"tower compiled ({mode}) call {i + 1} vs eager, bf16", out, eager))
    torch.testing.assert_close(outs[2], outs[1], rtol=0, atol=0)  # a replay gives what the recording gave
    if mode == "reduce-overhead" and ON_CUDA:  # inductor falls back to plain kernels, quietly, when it cannot graph
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
