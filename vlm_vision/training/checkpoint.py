"""Checkpoints: `checkpoint-STEP/` folders written atomically, pruned, found and resumed from.

A checkpoint holds the trainable weights (written by the job: for `vlm-vision train` `save_trained`,
the same files as `final/`, gathered whole from sharded runs), the optimizer, the scheduler, every
process's RNG state (accelerate's `save_state`) and `trainer_state.json` (step, data position, the
run's settings). Under DeepSpeed the engine's own checkpoint keeps the trainable weights only
(`exclude_frozen_parameters`), not the whole base model; under FSDP the optimizer state is gathered
whole into `optimizer_full.pt`. A run resumes only with the settings it started with, apart from
those its command lists as resumable (`vlm_vision.training.config.RESUMABLE_CHANGES` for `train`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from video.atomic_files import replace_dir
from vlm_vision.errors import InputError
from vlm_vision.training.runtime import deepspeed_kwargs
from vlm_vision.training.sharded import save_optimizer_state

TRAINABLE_FILE = "trainable.safetensors"
"""A checkpoint's trainable weights by parameter name (`save_trainable`), for jobs without a format of their own."""

__all__ = ["TRAINABLE_FILE", "check_resumable", "latest_checkpoint", "load_trainable", "prune_checkpoints",
           "read_state", "save_checkpoint", "save_trainable"]


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


def read_state(checkpoint: Path, settings: dict[str, Any], resumable: Collection[str]) -> tuple[int, int]:
    """(step, position) of `checkpoint`, after checking it was written with `settings` (JSON values).

    Raises:
        InputError: naming the settings that changed, (then, now), unless they are all `resumable`.
    """
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    check_resumable(state["config"], settings, resumable, folder=settings.get("output_dir", checkpoint.parent))
    return state["step"], state["position"]


def check_resumable(saved: dict[str, Any], now: dict[str, Any], resumable: Collection[str], folder: Any) -> None:
    """Raise unless the settings `now` differ from the `saved` ones only in `resumable` (of the run in `folder`)."""
    changed = {k: (saved.get(k), v) for k, v in now.items() if k not in resumable and saved.get(k) != v}
    if changed:
        raise InputError("cannot resume", f"--output-dir {folder}", f"the same settings as the run "
                         f"being resumed; cannot resume: the run was started with other settings (then, now): "
                         f"{changed}")


def save_checkpoint(accelerator: Any, out: Path, step: int, position: int, *, settings: dict[str, Any],
                    keep_last: int, save_weights: Callable[[Path], None],
                    optimizer: tuple[nn.Module, torch.optim.Optimizer] | None = None) -> None:
    """`checkpoint-STEP/`: trainable weights, optimizer, scheduler, RNG of every process, position.

    Every process writes into one temporary folder; the main process renames it into place once
    all are done, then prunes all but the `keep_last` newest checkpoints. `save_weights(folder)`
    writes the trainable weights (every process calls it, so that sharded weights can be gathered);
    `settings` go to `trainer_state.json`. `optimizer` is an FSDP run's (model, optimizer):
    accelerate does not hold it, and its state is gathered whole.
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
            save_optimizer_state(*optimizer, tmp, accelerator.is_main_process)
        save_weights(tmp)
        if accelerator.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"step": step, "position": position, "config": settings}, indent=2))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_dir(tmp, out / f"checkpoint-{step}")
            prune_checkpoints(out, keep_last)
    except BaseException:  # Ctrl-C or a failure mid-save: no half-written checkpoint is left
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()


def save_trainable(model: nn.Module, folder: Path, main: bool) -> None:
    """Write `model`'s trainable parameters, by name, into `folder/TRAINABLE_FILE` (the main process)."""
    if main:
        save_file({name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad},
                  str(folder / TRAINABLE_FILE))


def load_trainable(model: nn.Module, folder: Path) -> None:
    """Copy `folder/TRAINABLE_FILE` into `model`'s trainable parameters.

    Raises:
        ValueError: when the file does not hold exactly the parameters that train, naming a few.
    """
    state = load_file(folder / TRAINABLE_FILE)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if state.keys() != trainable.keys():
        raise ValueError(f"{folder / TRAINABLE_FILE} holds other weights than the model trains: missing "
                         f"{sorted(trainable.keys() - state.keys())[:3]}, unexpected "
                         f"{sorted(state.keys() - trainable.keys())[:3]}")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(state[name])
