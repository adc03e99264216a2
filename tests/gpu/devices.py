"""Where the GPU tests run, at what size, and how they compare two sets of features.

Every test in `tests/gpu/` is marked `gpu`. It runs on CUDA, and `tests/conftest.py` skips it when
CUDA is absent (as on CI). `VLM_VISION_TEST_DEVICE=cpu` runs the same tests on the CPU instead,
bfloat16 included, with smaller towers: a dry run of their logic on a machine without a GPU.

On CUDA the tower tests use the architecture users run, ViT-L/14@336 (random weights; speed and
rounding do not depend on their values); on the CPU a tiny tower whose every width is a multiple
of 16 (the FP8 matmuls need that).

Shapes: B images, N tokens, D width.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # tests/conftest.py imports this module for every run: keep transformers out of it
    from transformers import CLIPVisionConfig

DEVICE_ENV = "VLM_VISION_TEST_DEVICE"
DEVICE = torch.device(os.environ.get(DEVICE_ENV, "cuda"))
ON_CUDA = DEVICE.type == "cuda"


def tower_config() -> CLIPVisionConfig:
    """ViT-L/14@336 on CUDA; on the CPU 3 blocks of width 64 on 32 px images (4 x 4 patches)."""
    from transformers import CLIPVisionConfig

    from vlm_vision import vision_config

    if ON_CUDA:
        return vision_config("ViT-L/14@336")
    return CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                            image_size=32, patch_size=8)


def tower_batch() -> int:
    """Images per tower test: enough for several kernel tiles on CUDA, cheap on the CPU."""
    return 8 if ON_CUDA else 3


def compare(name: str, out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Distance of `out` from `ref` (float[..., D] each, same shape), printed as one `measured` line.

    Returns:
        {"max_abs": largest |out - ref|, "scale": largest |ref|, "min_cos" / "mean_cos": cosine
        similarity of each token (last dimension) to the reference's}.
    """
    if out.shape != ref.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(out.shape)} vs {tuple(ref.shape)}")
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)  # (...,) one per token
    stats = {"max_abs": (out - ref).abs().max().item(), "scale": ref.abs().max().item(),
             "min_cos": cos.min().item(), "mean_cos": cos.mean().item()}
    print(f"measured {name} on {DEVICE}: max |diff| {stats['max_abs']:.3e} at scale {stats['scale']:.3g}, "
          f"token cosine min {stats['min_cos']:.6f} mean {stats['mean_cos']:.6f}")
    return stats
