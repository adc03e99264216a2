"""`vlm-vision train`: one flag per `TrainConfig` field.

    vlm-vision train --llm LLM --tower TOWER --data train.jsonl --media-root media/ --output-dir runs/s1 --stage 1
    vlm-vision train ... --output-dir runs/s2 --stage 2 --init-from runs/s1/final
    accelerate launch -m vlm_vision.commands.main train ...        # several GPUs / machines

Exporting a trained folder (merged, for transformers and vLLM) is `vlm-vision export` (`vlm_vision.commands.export`).

The flags are built from the config's fields, never listed by hand (`vlm_vision.commands.config_flags`): the
field `max_length` is `--max-length`, its type and default come from the dataclass, its help is the
docstring under the field, and `metadata["choices"]` become the flag's choices. A field whose value
needs its own text format has a parser in `_PARSERS`.
"""

from __future__ import annotations

import argparse
import json
import logging

from accelerate import PartialState

from vlm_vision.model.anyres import DEFAULT_PINPOINTS
from vlm_vision.errors import InputError
from vlm_vision.commands.config_flags import Parsers, add_config_arguments, config_from_flags
from vlm_vision.commands.input_checks import check_data_spec, check_folder, check_output_folder, check_weights, weights_errors
from vlm_vision.training.config import TrainConfig
from vlm_vision.training.provenance import ForeignTokens
from vlm_vision.training.skips import TooManySkipped
from vlm_vision.training.loop import train

__all__ = ["RESUME_HINT", "add_arguments", "check_train_inputs", "config_from_args", "run"]

RESUME_HINT = "to continue from the last checkpoint-STEP/ (--save-every), run the same command with --resume"


def _pinpoints(text: str) -> list[list[int]]:
    """`--image-grid-pinpoints`: "default" or a JSON list of [height, width] pairs."""
    if text == "default":
        return [list(p) for p in DEFAULT_PINPOINTS]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from e
    if not (isinstance(value, list) and value and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and v > 0 for v in p) for p in value)):
        raise argparse.ArgumentTypeError(f"expected a list of [height, width] pairs of positive ints, got {text!r}")
    return value


# field -> (text parser, metavar) for fields that are not a plain int, float, str, bool or tuple[str, ...]
_PARSERS: Parsers = {
    "image_grid_pinpoints": (_pinpoints, "default|JSON"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainConfig` field (in field order)."""
    add_config_arguments(parser.add_argument_group("training (the fields of vlm_vision.TrainConfig)"), TrainConfig,
                         _PARSERS)



def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the `TrainConfig` of parsed flags.

    Raises:
        InputError: naming the required flags that are missing, or a flag with a refused value.
    """
    return config_from_flags(args, TrainConfig)


def check_train_inputs(config: TrainConfig) -> None:
    """Everything about `config` that can be checked before the LLM loads and the data is scanned.

    Raises:
        InputError: naming the flag and its value (data files, folders, output folder, weights).
    """
    check_output_folder(config.output_dir, "--output-dir")
    for path, name in ((config.media_root, "--media-root"), (config.image_folder, "--image-folder"),
                       (config.video_folder, "--video-folder")):
        check_folder(path, name, "an existing folder that the data's media paths are relative to")
    check_data_spec(config.data, "--data")
    if config.eval_data:
        check_data_spec(config.eval_data, "--eval-data")
    if config.init_from:
        check_folder(config.init_from, "--init-from", "a previous run's final/ folder")
    check_weights(config.llm, "--llm", what="LLM weights")
    check_weights(config.tower, "--tower", what="tower weights")


def run(args: argparse.Namespace) -> int:
    """Run `vlm-vision train` from parsed flags; 0 on success.

    Raises:
        InputError: for missing or refused flags, inputs that do not exist or cannot be read, an
            output folder that cannot be written, weights not on this machine.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    check_train_inputs(config)
    try:
        with weights_errors({"--llm": config.llm}, "LLM weights"), weights_errors({"--tower": config.tower},
                                                                                   "tower weights"):
            final = train(config)
    except TooManySkipped as e:  # the data, not a bug (every process counts everyone's skips: all stop)
        raise InputError("too many bad samples", f"--data {config.data}", f"at most --max-skip-fraction "
                         f"{config.max_skip_fraction} of the samples skipped; {e}") from e
    except ForeignTokens as e:
        raise InputError("cached tokens made with other weights or settings", f"--data {config.data}",
                         f"token files made by this run's tower and settings; {e}",
                         hint="--accept-foreign-tokens trains on them anyway") from e
    if PartialState().is_main_process:
        print(f"trained model written to {final}")
    return 0
