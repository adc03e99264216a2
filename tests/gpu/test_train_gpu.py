"""`vlm-vision train` on the GPU: a few stage-2 (LoRA) steps with the frozen parts in bfloat16, bf16
autocast and gradient checkpointing, on synthetic one-colour videos; the loss falls."""

from __future__ import annotations

import json

import pytest
import torch

from tests.gpu.devices import DEVICE, ON_CUDA
from tests.vlm_vision.train_fixtures import write_colour_dataset, write_llm_folder, write_tower_folder
from vlm_vision.commands.main import main

pytestmark = pytest.mark.gpu

STEPS = 8


def test_bf16_gradient_checkpointing_steps_lower_the_loss(tmp_path, monkeypatch, capsys):
    if not ON_CUDA:  # accelerate takes CUDA whenever there is one; the dry run must stay on the CPU
        monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    data = write_colour_dataset(tmp_path / "media", n=8, frames=4)
    out = tmp_path / "run"
    if ON_CUDA:
        torch.cuda.reset_peak_memory_stats(DEVICE)
    rc = main(["train", "--llm", str(write_llm_folder(tmp_path / "llm")), "--tower",
               str(write_tower_folder(tmp_path / "tower")), "--data", str(data), "--media-root", str(tmp_path / "media"),
               "--output-dir", str(out), "--stage", "2", "--max-steps", str(STEPS), "--batch-size", "4",
               "--lr", "1e-2", "--projector-lr", "1e-2", "--lora-r", "8", "--lora-alpha", "16", "--num-frames", "4",
               "--max-length", "128", "--warmup-ratio", "0", "--model-dtype", "bfloat16", "--mixed-precision", "bf16",
               "--gradient-checkpointing", "--no-progress"])
    assert rc == 0 and (out / "final" / "adapter_model.safetensors").exists()
    losses = [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]
    peak = torch.cuda.max_memory_allocated(DEVICE) / 2**20 if ON_CUDA else None
    print(f"measured train losses on {DEVICE} (bf16, checkpointing): {[round(x, 3) for x in losses]}"
          + (f", peak GPU memory {peak:.0f} MiB" if ON_CUDA else ""))
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    if ON_CUDA:
        assert peak > 0, "nothing was allocated on the GPU: the run did not train there"
