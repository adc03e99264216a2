"""Checkpoints: `checkpoint-STEP/` folders written atomically, pruned, found and resumed from.

A checkpoint holds the trainable weights (`save_trained`, the same files as `final/`, gathered
whole from sharded runs), the optimizer, the scheduler, every process's RNG state (accelerate's
`save_state`) and `trainer_state.json` (step, data position, the run's config). Under DeepSpeed
the engine's own checkpoint keeps the trainable weights only (`exclude_frozen_parameters`), not
the whole base model; under FSDP the optimizer state is gathered whole into `optimizer_full.pt`.
A run resumes only with the settings it started with, apart from `RESUMABLE_CHANGES`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from video.atomic_files import replace_dir
from vlm_vision.errors import InputError
from vlm_vision.training.config import RESUMABLE_CHANGES, TrainConfig, config_dict
from vlm_vision.training.runtime import deepspeed_kwargs
from vlm_vision.training.sharded import FrozenParts, save_optimizer_state, whole_state
from vlm_vision.model.run_folder import TrainedSpec, save_trained

__all__ = ["check_resumable", "latest_checkpoint", "prune_checkpoints", "read_state", "save_checkpoint"]


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete `checkpoint-STEP/` with the highest step (temporary folders are never matched)."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the `keep_last` newest checkpoints."""
    found = sorted((p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for old in found[:-keep_last]:
        shutil.rmtree(old)


def read_state(checkpoint: Path, config: TrainConfig) -> tuple[int, int]:
    """(step, position) of `checkpoint`, after checking it was written with the settings of `config`.

    Raises:
        ValueError: naming the settings that changed, (then, now).
    """
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    check_resumable(state["config"], config)
    return state["step"], state["position"]


def check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    """Raise unless `config` differs from the saved config only in `RESUMABLE_CHANGES`."""
    now = config_dict(config)
    changed = {k: (saved.get(k), v) for k, v in now.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v}
    if changed:
        raise InputError("cannot resume", f"--output-dir {config.output_dir}", f"the same settings as the run "
                         f"being resumed; cannot resume: the run was started with other settings (then, now): "
                         f"{changed}")


def save_checkpoint(accelerator: Any, model: nn.Module, processor: Any, spec: TrainedSpec, config: TrainConfig,
                    out: Path, step: int, position: int, *, frozen: FrozenParts,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """`checkpoint-STEP/`: trainable weights, optimizer, scheduler, RNG of every process, position.

    Every process writes into one temporary folder; the main process renames it into place once
    all are done, then prunes old checkpoints. `frozen` is what `save_trained` writes but does not
    train; `optimizer` is given for an FSDP run (accelerate does not hold it), whose state is
    gathered whole.
    """
    tmp = out / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), **deepspeed_kwargs(accelerator, exclude_frozen_parameters=True))
        if optimizer is not None:
            save_optimizer_state(model, optimizer, tmp, accelerator.is_main_process)
        state = whole_state(model, frozen)  # every process takes part in gathering sharded weights
        if accelerator.is_main_process:
            save_trained(model, processor, spec, tmp, state=state, rows=frozen.rows)
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"step": step, "position": position, "config": config_dict(config)}, indent=2))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_dir(tmp, out / f"checkpoint-{step}")
            prune_checkpoints(out, config.keep_last)
    except BaseException:  # Ctrl-C or a failure mid-save: no half-written checkpoint is left
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
