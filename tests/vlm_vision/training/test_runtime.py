"""Runtime defaults follow the device: bf16 + checkpointing on CUDA, float32 on the CPU; explicit values win."""

from __future__ import annotations

import torch

from vlm_vision import TrainConfig
from vlm_vision.training.runtime import device_defaults, resolve_device_defaults

REQUIRED = dict(llm="l", tower="t", data="d.jsonl", output_dir="o")


def test_auto_is_bf16_with_checkpointing_on_cuda_and_float32_on_cpu():
    assert device_defaults("cuda", bf16_supported=True) == {
        "model_dtype": "bfloat16", "mixed_precision": "bf16", "gradient_checkpointing": True}
    assert device_defaults("cuda", bf16_supported=False) == {
        "model_dtype": "float32", "mixed_precision": "fp16", "gradient_checkpointing": True}
    assert device_defaults("cpu", bf16_supported=True) == {
        "model_dtype": "float32", "mixed_precision": "no", "gradient_checkpointing": False}


def test_config_defaults_are_auto_and_resolve_on_the_cpu():
    cfg = TrainConfig(**REQUIRED)
    assert (cfg.model_dtype, cfg.mixed_precision, cfg.gradient_checkpointing, cfg.max_length) == ("auto", "auto", None,
                                                                                                  None)
    resolved, line = resolve_device_defaults(cfg, torch.device("cpu"))
    assert (resolved.model_dtype, resolved.mixed_precision, resolved.gradient_checkpointing) == ("float32", "no", False)
    assert "model_dtype=float32 (auto)" in line and "--mixed-precision" in line


def test_explicit_values_win_over_auto():
    cfg = TrainConfig(**REQUIRED, model_dtype="bfloat16", mixed_precision="bf16", gradient_checkpointing=True)
    resolved, line = resolve_device_defaults(cfg, torch.device("cpu"))
    assert (resolved.model_dtype, resolved.mixed_precision, resolved.gradient_checkpointing) == ("bfloat16", "bf16",
                                                                                                 True)
    assert "(auto)" not in line
    off = resolve_device_defaults(TrainConfig(**REQUIRED, gradient_checkpointing=False), torch.device("cpu"))[0]
    assert off.gradient_checkpointing is False
