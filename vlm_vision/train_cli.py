"""`vlm-vision train`: one flag per `TrainConfig` field.

    vlm-vision train --llm LLM --tower TOWER --data train.jsonl --media-root media/ --output-dir runs/s1 --stage 1
    vlm-vision train ... --output-dir runs/s2 --stage 2 --init-from runs/s1/final
    accelerate launch -m vlm_vision.cli train ...        # several GPUs / machines

Exporting a trained folder (merged, for transformers and vLLM) is `vlm-vision export` (`vlm_vision.export_cli`).

The flags are built from the config's fields, never listed by hand (`vlm_vision.config_flags`): the
field `max_length` is `--max-length`, its type and default come from the dataclass, its help is the
docstring under the field, and `metadata["choices"]` become the flag's choices. A field whose value
needs its own text format has a parser in `_PARSERS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from accelerate import PartialState

from vlm_vision.anyres_grid import DEFAULT_PINPOINTS
from vlm_vision.config_flags import Parsers, add_config_arguments, missing_flags
from vlm_vision.train_config import TrainConfig
from vlm_vision.training import train

__all__ = ["add_arguments", "config_from_args", "run"]


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
        ValueError: naming the required flags that are missing.
    """
    missing = missing_flags(args, TrainConfig)
    if missing:
        raise ValueError(f"missing required flags for training: {' '.join(missing)}")
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def run(args: argparse.Namespace) -> int:
    """Run `vlm-vision train` from parsed flags; 0 on success, 2 for missing flags."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"vlm-vision train: {e}")
        return 2
    final = train(config)
    if PartialState().is_main_process:
        print(f"trained model written to {final}")
    return 0
