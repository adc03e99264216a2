"""The runtime of a training run: defaults that follow the device, accelerate's `Accelerator`, its release.

accelerate supplies devices, mixed precision, gradient accumulation, the process group, DDP and
DeepSpeed (`accelerate launch`, configs in `examples/accelerate/`). FSDP is `vlm_vision.training.sharded`'s.

Why the defaults follow the device: a 7B LLM with 32 frames (4608 visual tokens) fits a GPU only
in bfloat16 with gradient checkpointing, and the CPU runs neither fast nor (for bf16 autocast)
everywhere. So `model_dtype`, `mixed_precision` and `gradient_checkpointing` default to "auto"
(None for the bool): on CUDA bfloat16 weights, bf16 autocast and checkpointing (float32 weights
with fp16 autocast on GPUs without bfloat16); on the CPU float32 and neither. What was chosen is
printed at start and recorded with the run; an explicit value always wins.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, parse_flag_from_env

from vlm_vision.training.config import TrainConfig

__all__ = ["check_processes", "deepspeed_kwargs", "device_defaults", "make_accelerator",
           "release_accelerator_state", "resolve_device_defaults", "run_device"]


def device_defaults(device_type: str, bf16_supported: bool) -> dict[str, Any]:
    """The values "auto" stands for on a device.

    Example:
        >>> device_defaults("cpu", bf16_supported=True)
        {'model_dtype': 'float32', 'mixed_precision': 'no', 'gradient_checkpointing': False}
    """
    if device_type != "cuda":
        return {"model_dtype": "float32", "mixed_precision": "no", "gradient_checkpointing": False}
    if bf16_supported:
        return {"model_dtype": "bfloat16", "mixed_precision": "bf16", "gradient_checkpointing": True}
    return {"model_dtype": "float32", "mixed_precision": "fp16", "gradient_checkpointing": True}


def run_device() -> torch.device:
    """The kind of device the run will train on: CUDA when there is one, unless ACCELERATE_USE_CPU says
    otherwise (known before the accelerator exists, whose mixed precision depends on it)."""
    return torch.device("cuda" if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
                        else "cpu")


def resolve_device_defaults(config: TrainConfig, device: torch.device) -> tuple[TrainConfig, str]:
    """`config` with its "auto" runtime settings replaced by `device`'s, and a line saying what was chosen."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    defaults = device_defaults(device.type, bf16)
    auto = {name: value for name, value in defaults.items() if getattr(config, name) in ("auto", None)}
    resolved = dataclasses.replace(config, **auto)
    shown = ", ".join(f"{name}={getattr(resolved, name)}{' (auto)' if name in auto else ''}" for name in defaults)
    return resolved, (f"runtime on {device.type}: {shown}; override with --model-dtype, --mixed-precision, "
                      f"--[no-]gradient-checkpointing")


def make_accelerator(config: TrainConfig) -> Any:
    """The `Accelerator` of a run: its mixed precision and gradient accumulation.

    Without CUDA, several processes (`torchrun`) join over gloo (accelerate's CPU mode), unless
    DeepSpeed is asked for. DeepSpeed's "auto" gradient clipping becomes `max_grad_norm`.

    Raises:
        ValueError: for accelerate's FSDP plugin (FSDP is `fsdp=True`), or `fsdp` under DeepSpeed.
        RuntimeError: when the processes disagree on how many they are (`check_processes`).
    """
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not deepspeed
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum, cpu=cpu,
        # Text-only batches leave the projector unused; DDP must not wait for its gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise ValueError("accelerate's FSDP plugin (distributed_type: FSDP) is not used by vlm-vision train: launch "
                         "with a multi-GPU config (examples/accelerate/fsdp.yaml) and pass fsdp=True (--fsdp)")
    if kind == DistributedType.DEEPSPEED:
        if config.fsdp:
            raise ValueError("fsdp=True (--fsdp) and DeepSpeed both shard the model; launch with one of them")
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds_config.get("gradient_clipping", "auto") == "auto":
            ds_config["gradient_clipping"] = config.max_grad_norm
    check_processes(accelerator)
    return accelerator


def check_processes(accelerator: Any) -> None:
    """Refuse a run whose launcher started more processes than accelerate sees.

    Two CPU processes under DeepSpeed (or a process group accelerate did not join) come up each as
    process 0 of 1: both would read the same samples and write the same files.

    Raises:
        RuntimeError: naming both counts.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # unset under MPI launchers, where accelerate counts
    if launched > accelerator.num_processes:
        raise RuntimeError(
            f"the launcher started {launched} processes but accelerate sees {accelerator.num_processes} "
            f"({accelerator.distributed_type}); DeepSpeed with several processes needs GPUs, and on CPUs "
            f"several processes train with DDP or fsdp=True (--fsdp) under torchrun")


def deepspeed_kwargs(accelerator: Any, **kwargs: Any) -> dict[str, Any]:
    """`kwargs` under DeepSpeed (for its `save_checkpoint` / `load_checkpoint`), else nothing."""
    return kwargs if accelerator.distributed_type == DistributedType.DEEPSPEED else {}


def release_accelerator_state() -> None:
    """Let a later `train` call in this process choose another mixed precision / accumulation.

    accelerate keeps its settings in process-wide singletons that refuse to change once set (a
    script running stage 1 in fp32 and stage 2 in bf16 would fail). The process group
    (`PartialState`) is kept: it belongs to the launcher.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
