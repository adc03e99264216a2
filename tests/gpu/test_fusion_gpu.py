"""`VisionLanguageModel` in bfloat16 on the GPU against transformers' LlavaNextVideoForConditionalGeneration
in bfloat16 on the same GPU, converted from the same weights (tests/vlm_vision/fusion_fixtures.py).

"Within bfloat16 tolerance" is measured, not guessed: the reference's own bfloat16 logits differ from
its float32 logits (on the CPU) by some amount; ours may differ from the reference's bfloat16 logits
by no more than that. Greedy generation gives the same tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.gpu.devices import DEVICE, compare
from tests.vlm_vision.fusion_fixtures import hf_video_model, pixels, prompt
from vlm_vision import VisionLanguageModel

pytestmark = pytest.mark.gpu

FRAMES = 3


@pytest.fixture(scope="module")
def models():
    """(reference float32 on the CPU, reference bf16 on the device, ours bf16 on the device)."""
    hf_cpu = hf_video_model(seed=1)
    hf = copy.deepcopy(hf_cpu).to(device=DEVICE, dtype=torch.bfloat16)
    ours = VisionLanguageModel.from_llava_next_video(copy.deepcopy(hf_cpu)).to(device=DEVICE, dtype=torch.bfloat16)
    return hf_cpu, hf, ours.eval()


@pytest.fixture(scope="module")
def inputs():
    ids = torch.tensor([prompt(5, ("video", FRAMES), 7, 8), prompt(9, 10, ("video", FRAMES), 11)])  # (2, L)
    return ids, pixels(2, FRAMES)  # (2, T, 3, 28, 28)


@torch.no_grad()
def test_bf16_logits_match_llava_next_video_bf16(models, inputs):
    hf_cpu, hf, ours = models
    ids, videos = inputs
    truth = hf_cpu(input_ids=ids, pixel_values_videos=videos).logits  # (2, L, V) float32
    ids_d, videos_d = ids.to(DEVICE), videos.to(device=DEVICE, dtype=torch.bfloat16)
    theirs = hf(input_ids=ids_d, pixel_values_videos=videos_d).logits
    mine = ours(ids_d, pixel_values_videos=videos_d).logits
    assert mine.device.type == DEVICE.type and mine.dtype == theirs.dtype == torch.bfloat16
    bf16_error = compare("LlavaNextVideo bf16 vs its own fp32 logits", theirs, truth)["max_abs"]
    assert bf16_error > 0, "the reference's bf16 logits equal its fp32 ones: it did not run in bfloat16"
    stats = compare("VisionLanguageModel bf16 vs LlavaNextVideo bf16 logits", mine, theirs)
    assert stats["max_abs"] <= bf16_error, (stats, bf16_error)
    assert stats["mean_cos"] >= 0.9999, stats


@torch.no_grad()
def test_bf16_greedy_generation_matches_llava_next_video(models, inputs):
    _, hf, ours = models
    ids, videos = inputs[0].to(DEVICE), inputs[1].to(device=DEVICE, dtype=torch.bfloat16)
    theirs = hf.generate(input_ids=ids, pixel_values_videos=videos, max_new_tokens=8, do_sample=False)
    mine = ours.generate(ids, pixel_values_videos=videos, max_new_tokens=8, do_sample=False)
    print(f"measured greedy tokens on {DEVICE} (bf16): ours {mine[:, ids.shape[1]:].tolist()}, "
          f"reference {theirs[:, ids.shape[1]:].tolist()}")
    assert mine.shape == (2, ids.shape[1] + 8) and torch.equal(mine[:, :ids.shape[1]], ids)
    assert torch.equal(mine, theirs)
