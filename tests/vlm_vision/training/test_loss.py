"""Token-weighted loss: a step's loss and gradients are those of one batch holding all its samples,
however the samples are cut into micro-batches (`grad_accum`) and processes (DDP)."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.vlm_vision.train_fixtures import write_colour_dataset, write_llm_folder, write_tower_folder
from vlm_vision import TrainConfig, train
from vlm_vision.training.loss import step_loss_scale

REPO = Path(__file__).resolve().parents[3]
FRAMES = 4


def write_uneven_dataset(root: Path, n: int = 8) -> Path:
    """`n` colour videos whose answers run from 3 to ~60 tokens, so a per-micro-batch mean would differ."""
    return write_colour_dataset(root, n, frames=FRAMES, answer=lambda i, colour: (
        f"{colour}." if i % 2 else " ".join([f"The video is mostly {colour}."] * (1 + i))))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven")
    return {"llm": str(write_llm_folder(root / "llm")), "tower": str(write_tower_folder(root / "tower")),
            "data": str(write_uneven_dataset(root / "media")), "media_root": str(root / "media")}


def config(parts, out: Path, **overrides) -> TrainConfig:
    values = dict(parts, output_dir=str(out), stage=2, max_steps=2, batch_size=4, grad_accum=1, num_frames=FRAMES,
                  max_length=256, lora_r=4, lora_alpha=8, lora_dropout=0.0, lr=1e-2, projector_lr=1e-2,
                  warmup_ratio=0.0, max_grad_norm=0.0, progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def log_losses(out: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    final = out / "final"
    return {**load_file(final / "adapter_model.safetensors"), **load_file(final / "projector.safetensors")}


def train_recording_gradients(cfg: TrainConfig) -> list[list[torch.Tensor]]:
    """`train(cfg)`, returning the gradients of every trainable tensor as each optimizer step sees them."""
    training = importlib.import_module("vlm_vision.training.loop")
    original, grads = training.cosine_schedule, []

    def spy(optimizer, *args):
        optimizer.register_step_pre_hook(lambda opt, a, k: grads.append(
            [p.grad.detach().clone() for g in opt.param_groups for p in g["params"]]))
        return original(optimizer, *args)

    training.cosine_schedule = spy
    try:
        train(cfg)
    finally:
        training.cosine_schedule = original
    return grads


def test_step_loss_scale_is_processes_times_accumulation_over_tokens():
    assert step_loss_scale(40, num_processes=2, grad_accum=2) == 4 / 40
    assert step_loss_scale(7, num_processes=1, grad_accum=1) == 1 / 7
    assert step_loss_scale(0, num_processes=1, grad_accum=3) == 3.0  # no labelled token: the sums are zero


def test_micro_batches_weigh_tokens_like_one_batch(parts, tmp_path):
    """batch 4 x accum 1 == batch 2 x accum 2 == batch 1 x accum 4: logged loss, gradients, weights."""
    runs = {}
    for batch_size, grad_accum in ((4, 1), (2, 2), (1, 4)):
        out = tmp_path / f"b{batch_size}a{grad_accum}"
        grads = train_recording_gradients(config(parts, out, batch_size=batch_size, grad_accum=grad_accum))
        runs[batch_size, grad_accum] = (log_losses(out), grads, final_weights(out))
    losses, grads, weights = runs[4, 1]
    assert len(losses) == 2 and len(grads) == 2
    for key in ((2, 2), (1, 4)):
        other_losses, other_grads, other_weights = runs[key]
        torch.testing.assert_close(torch.tensor(other_losses), torch.tensor(losses), rtol=1e-5, atol=1e-6, msg=str(key))
        for step, (mine, theirs) in enumerate(zip(other_grads, grads)):
            for a, b in zip(mine, theirs):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{key} step {step + 1}")
        assert other_weights.keys() == weights.keys()
        for name in weights:
            torch.testing.assert_close(other_weights[name], weights[name], rtol=1e-4, atol=1e-5, msg=f"{key} {name}")


def test_the_logged_loss_is_the_token_mean_of_the_step(parts, tmp_path):
    """One step over all 8 samples in 8 micro-batches at a negligible lr: the logged loss is the
    evaluation loss of those samples (token-weighted), not the mean of the 8 per-sample means."""
    out = tmp_path / "tokens"
    train(config(parts, out, batch_size=1, grad_accum=8, max_steps=1, lr=1e-12, projector_lr=1e-12,
                 eval_data=parts["data"]))
    entries = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    logged = next(e["loss"] for e in entries if "loss" in e)
    evaluated = next(e["eval_loss"] for e in entries if "eval_loss" in e)
    assert logged == pytest.approx(evaluated, rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(parts, tmp_path):
    """DDP over 2 gloo processes with batch 2 each == one process with batch 4: losses and weights."""
    single = tmp_path / "single"
    train(config(parts, single, max_steps=3))
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "vlm_vision.commands.main", "train", "--llm", parts["llm"], "--tower", parts["tower"], "--data", parts["data"],
           "--media-root", parts["media_root"], "--output-dir", str(ddp), "--stage", "2", "--max-steps", "3",
           "--batch-size", "2", "--num-frames", str(FRAMES), "--max-length", "256", "--lora-r", "4",
           "--lora-alpha", "8", "--lora-dropout", "0", "--lr", "1e-2", "--projector-lr", "1e-2",
           "--warmup-ratio", "0", "--max-grad-norm", "0", "--seed", "0", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(log_losses(ddp)), torch.tensor(log_losses(single)), rtol=1e-5, atol=1e-6)
    a, b = final_weights(ddp), final_weights(single)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
