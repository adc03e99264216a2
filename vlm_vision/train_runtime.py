"""The runtime of a training run: accelerate's `Accelerator` for a `TrainConfig`, and its release.

accelerate supplies devices, mixed precision, gradient accumulation and DDP (`accelerate launch`).
"""

from __future__ import annotations

from typing import Any

from vlm_vision.train_config import TrainConfig

__all__ = ["make_accelerator", "release_accelerator_state"]


def make_accelerator(config: TrainConfig) -> Any:
    """The `Accelerator` of a run: its mixed precision and gradient accumulation."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    return Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
        # Text-only batches leave the projector unused; DDP must not wait for its gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def release_accelerator_state() -> None:
    """Let a later `train` call in this process choose another mixed precision / accumulation.

    accelerate keeps its settings in process-wide singletons that refuse to change once set (a
    script running stage 1 in fp32 and stage 2 in bf16 would fail). The process group
    (`PartialState`) is kept: it belongs to the launcher.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
