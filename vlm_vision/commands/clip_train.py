"""`vlm-vision clip-train`: its flags, the checks of its inputs, and the call into `vlm_vision.training.clip`."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from vlm_vision.commands.config_flags import add_config_arguments, config_from_flags, flag
from vlm_vision.commands.input_checks import (
    check_data_spec,
    check_folder,
    check_output_folder,
    check_weights,
    weights_errors,
)
from vlm_vision.errors import InputError
from vlm_vision.training.clip import ClipTrainConfig, config_problems, train
from vlm_vision.training.skips import TooManySkipped

__all__ = ["RESUME_HINT", "add_arguments", "check_clip_inputs", "run"]

RESUME_HINT = "to continue from the last checkpoint-STEP/ (--save-every), run the same command with --resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `ClipTrainConfig` field, in field order (help from the field docstrings)."""
    add_config_arguments(parser, ClipTrainConfig, {name: (Path, "PATH") for name in ("data", "media_root", "output_dir")})


def check_clip_inputs(config: ClipTrainConfig) -> None:
    """Everything about `config` that can be checked before CLIP loads and the data is read.

    Raises:
        InputError: naming the flag and its value (settings, data file, media root, output folder, weights).
    """
    bad = config_problems(config)
    if bad:
        raise InputError("bad value" if len(bad) == 1 else "bad values",
                         " ".join(f"{flag(name)} {getattr(config, name)}" for name in bad),
                         "; ".join(f"{name} must be {rule}" for name, rule in bad.items()))
    check_output_folder(config.output_dir, "--output-dir")
    check_folder(config.media_root, "--media-root", "an existing folder that the data's media paths are relative to")
    check_data_spec(config.data, "--data", mixtures=False)
    check_weights(config.model, "--model", what="CLIP weights")


def run(args: argparse.Namespace) -> int:
    """Run `vlm-vision clip-train`; 0 on success, 2 for mostly bad data (the reason on stderr).

    Raises:
        InputError: for missing or refused flags, inputs that do not exist or cannot be read, an
            output folder that cannot be written, weights not on this machine.
    """
    config = config_from_flags(args, ClipTrainConfig)
    check_clip_inputs(config)
    out = Path(config.output_dir)
    created = not out.exists()
    try:
        with weights_errors({"--model": config.model}, what="CLIP weights"):
            metrics = train(config)
    except TooManySkipped as e:
        print(f"vlm-vision clip-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # without checkpoints nothing can resume: a folder this run created goes
        if created and not config.save_every:
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(_summary(metrics, out))
    return 0


def _summary(metrics: dict[str, Any], out: Path) -> str:
    """The run's figures as a few printed lines: steps and loss, recall before -> after, where it went."""
    lines = [f"trained {metrics['steps']} steps on {metrics['num_train']} pairs "
             f"(loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}); "
             f"skipped {metrics['skipped']} bad samples"]
    if metrics["before"] and metrics["after"] and metrics["after"].get("num_pairs"):
        for key in (k for k in metrics["after"] if "recall" in k):
            lines.append(f"  {key}: {metrics['before'][key]:.3f} -> {metrics['after'][key]:.3f}")
    lines.append(f"saved to {out} (metrics.json)")
    return "\n".join(lines)
