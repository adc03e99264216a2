"""`vlm-vision extract` with the tower on the GPU (bfloat16; frames travel as uint8 through pinned
memory and are preprocessed there) over the real videos in tests/data, against the CPU path
(float32, preprocessing on the CPU): the same frames, and tokens within bfloat16 tolerance."""

from __future__ import annotations

import pathlib

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from tests.conftest import DATA
from tests.gpu.devices import DEVICE, compare
from video import load_video_tokens
from video.corpus.plan import output_name
from vlm_vision.commands.main import main

pytestmark = pytest.mark.gpu

VIDEOS = sorted(DATA.glob("*.mp4"))


@pytest.fixture(scope="module")
def tower_folder(tmp_path_factory):
    """A random CLIP at the real input size (336 px, 14 px patches: 24 x 24, 144 tokens after pooling), 2 blocks."""
    folder = tmp_path_factory.mktemp("tower")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=336, patch_size=14)).save_pretrained(folder)
    return folder


def test_device_tokens_match_the_cpu_path(tmp_path, tower_folder, capsys):
    common = [*map(str, VIDEOS), "--model", str(tower_folder), "--num-frames", "8"]
    assert main(["extract", *common, "--out", str(tmp_path / "dev"), "--device", str(DEVICE), "--dtype", "bfloat16"]) == 0
    assert f"on {DEVICE.type}" in "".join(capsys.readouterr())  # the header names the device it ran on
    assert main(["extract", *common, "--out", str(tmp_path / "cpu"), "--device", "cpu", "--dtype", "float32",
                 "--workers", "0"]) == 0
    assert len(VIDEOS) == 4
    for name in (output_name(pathlib.PurePath(v.name)) for v in VIDEOS):
        dev = load_video_tokens(tmp_path / "dev" / f"{name}.safetensors")
        cpu = load_video_tokens(tmp_path / "cpu" / f"{name}.safetensors")
        assert dev.indices == cpu.indices and dev.tokens.shape == cpu.tokens.shape == (8, 144, 64)
        assert dev.tokens.dtype == torch.bfloat16 and cpu.tokens.dtype == torch.float32
        stats = compare(f"extract {name} bf16 vs CPU fp32 tokens", dev.tokens, cpu.tokens)
        assert stats["mean_cos"] >= 0.999 and stats["max_abs"] <= stats["scale"] / 16, stats
