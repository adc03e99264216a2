"""`vlm-vision eval`: its flags, the checks of its inputs, and the call into `vlm_vision.evaluation.run`."""

from __future__ import annotations

import argparse
import logging

from vlm_vision.commands.config_flags import add_config_arguments, config_from_flags
from vlm_vision.commands.input_checks import (
    check_data_spec,
    check_folder,
    check_model_folder,
    check_output_folder,
    weights_errors,
)
from vlm_vision.evaluation.run import EvalConfig, run_eval

__all__ = ["RESUME_HINT", "add_arguments", "check_eval_inputs", "run"]

RESUME_HINT = "run the same command again to continue (the questions already answered are kept)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `EvalConfig` field, built from the fields as `vlm-vision train`'s are."""
    add_config_arguments(parser, EvalConfig)


def check_eval_inputs(config: EvalConfig) -> None:
    """Everything about `config` that can be checked before the model loads and the data is read.

    Raises:
        InputError: naming the flag and its value (model folder and the weights it names, data files,
            media root, output folder).
    """
    check_output_folder(config.output_dir, "--output-dir")
    check_folder(config.media_root, "--media-root", "an existing folder that the data's media paths are relative to")
    for path in config.data:
        check_data_spec(path, "--data", mixtures=False, parquet=True)
    check_model_folder(config.model, "--model")


def run(args: argparse.Namespace) -> int:
    """Run `vlm-vision eval` from parsed flags; 0 on success.

    Raises:
        InputError: for missing or refused flags, a model folder or data that cannot be read, an
            output folder that cannot be written, weights not on this machine.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_flags(args, EvalConfig)
    check_eval_inputs(config)
    with weights_errors({"--model": config.model}, what="model"):
        run_eval(config)
    return 0
