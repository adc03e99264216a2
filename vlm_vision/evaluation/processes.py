"""The device and the process of a command launched once or as several processes.

`vlm-vision extract` and `vlm-vision eval` run as one process, or as several under `accelerate
launch` / `torchrun` (WORLD_SIZE > 1): then each process takes its own accelerator, and without
CUDA (or with `--device cpu`) the processes talk over gloo on the CPU. (Training goes through
accelerate's `Accelerator` instead, `vlm_vision.training.runtime`.)
"""

from __future__ import annotations

import os

import torch

from vlm_vision.errors import InputError

__all__ = ["barrier", "resolve_device"]


def resolve_device(name: str | None) -> tuple[torch.device, int, int]:
    """(device, process index, number of processes), from `--device` and the launcher.

    Raises:
        InputError: `--device cuda` on a machine without CUDA (this process's own mistake: `rank_only`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState  # lazy: accelerate only under a multi-process launch

        state = PartialState(cpu=name == "cpu" or not torch.cuda.is_available())  # gloo without CUDA
        device = state.device if name is None or name == "cuda" else torch.device(name)
        return device, state.process_index, state.num_processes
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine", f"--device {name}",
                         f"cpu, or a machine with CUDA (torch {torch.__version__})", rank_only=True)
    return device, 0, 1


def barrier(num_processes: int) -> None:
    """Wait until every process of the run gets here (nothing to wait for in a single process)."""
    if num_processes > 1:
        from accelerate import PartialState  # lazy: as in `resolve_device`

        PartialState().wait_for_everyone()
