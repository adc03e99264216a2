"""`CLIPImageTransform` on a uint8 tensor on the GPU against the CPU path, on real video frames.

GPUs have no uint8 antialiased resize: there the transform resizes in float one axis at a time and
rounds after each, as PIL does. Same geometry, values within one grey level (1/255 of the range,
divided by CLIP's smallest std after normalisation).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DATA
from tests.gpu.devices import DEVICE
from video import load_video
from vlm_vision.model.configs import CLIP_STD
from vlm_vision.model.transforms import CLIPImageTransform

pytestmark = pytest.mark.gpu

ONE_GREY_LEVEL = 1 / 255 / min(CLIP_STD)  # ~0.0150 in normalised units


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("name", ["cockatoo.mp4", "cup.mp4", "realshort.mp4"])  # 1280x720, 640x480, 320x240
def test_device_uint8_transform_equals_the_cpu_path(name, mode):
    frames = load_video(DATA / name, num_frames=4).frames  # (T, H, W, 3) uint8
    transform = CLIPImageTransform(image_size=336, mode=mode)
    cpu = transform(frames)  # (T, 3, 336, 336)
    on_device = transform(frames.to(DEVICE))
    assert on_device.device.type == DEVICE.type and on_device.shape == cpu.shape == (4, 3, 336, 336)
    diff = (on_device.cpu() - cpu).abs()  # (T, 3, 336, 336)
    print(f"measured CLIPImageTransform {mode} {name} on {DEVICE} vs CPU: max |diff| {diff.max().item():.4f}, "
          f"mean {diff.mean().item():.2e} (one grey level {ONE_GREY_LEVEL:.4f})")
    assert diff.max().item() <= ONE_GREY_LEVEL + 1e-6
