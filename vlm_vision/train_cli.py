"""`vlm-vision train`: one flag per `TrainConfig` field, plus `--merge` to export a trained folder.

    vlm-vision train --llm LLM --tower TOWER --data train.jsonl --media-root media/ --output-dir runs/s1 --stage 1
    vlm-vision train ... --output-dir runs/s2 --stage 2 --init-from runs/s1/final
    accelerate launch -m vlm_vision.cli train ...        # several GPUs / machines
    vlm-vision train --merge runs/s2/final --merge-output runs/s2/merged [--llava-next-video runs/s2/hf]

The flags are built from the config's fields, never listed by hand: the field `max_length` is
`--max-length`, its type and default come from the dataclass, its help is the docstring under the
field, and `metadata["choices"]` become the flag's choices. A bool field is a pair of flags
(`--resume/--no-resume`, `--progress/--no-progress`); a tuple field takes several values. A field
whose value needs its own text format has a parser in `_PARSERS`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import logging
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any

from vlm_vision.train_config import TrainConfig

__all__ = ["add_arguments", "add_config_arguments", "config_from_args", "field_docs", "run"]


def _pinpoints(text: str) -> list[list[int]]:
    """`--image-grid-pinpoints`: "default" or a JSON list of [height, width] pairs."""
    import json

    from vlm_vision.anyres import DEFAULT_PINPOINTS

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
_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "image_grid_pinpoints": (_pinpoints, "default|JSON"),
}


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of the dataclass `cls`, whitespace collapsed.

    Example:
        >>> field_docs(TrainConfig)["grad_accum"]
        'Micro-batches per optimizer step.'
    """
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None  # a required field: checked in `config_from_args`, so that `--merge` can go alone


def _without_none(hint: Any) -> Any:
    """`X` of `X | None`; `hint` itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _argument(field: dataclasses.Field, hint: Any, doc: str) -> tuple[str, dict[str, Any]]:
    """`add_argument`'s flag and keyword arguments for one config field.

    Raises:
        TypeError: for a field type the CLI cannot parse (give it a parser in `_PARSERS`).
    """
    default = _default(field)
    kwargs: dict[str, Any] = {"default": default, "dest": field.name}
    hint = _without_none(hint)
    if field.name in _PARSERS:
        kwargs["type"], kwargs["metavar"] = _PARSERS[field.name]
    elif hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif hint in (int, float, str):
        kwargs["type"] = hint
    elif typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        kwargs["type"], kwargs["nargs"] = typing.get_args(hint)[0], "+"
    else:
        raise TypeError(f"config field {field.name}: no flag for type {hint!r}; add a parser to _PARSERS")
    if "choices" in field.metadata:
        kwargs["choices"] = field.metadata["choices"]
    shown = f" (default: {' '.join(default) if isinstance(default, tuple) else default})"
    kwargs["help"] = doc.replace("%", "%%") + (shown if default is not None else "")  # argparse formats help with %
    return _flag(field.name), kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainConfig` field (in field order), then the export flags."""
    add_config_arguments(parser.add_argument_group("training (the fields of vlm_vision.TrainConfig)"), TrainConfig)

    export = parser.add_argument_group("export instead of training")
    export.add_argument("--merge", metavar="TRAINED_DIR", help="merge the LoRA of a trained folder into the LLM")
    export.add_argument("--merge-output", metavar="DIR", help="where the merged model goes (with --merge)")
    export.add_argument("--llava-next-video", metavar="DIR",
                        help="also write transformers' LlavaNextVideoForConditionalGeneration layout (with --merge)")


def add_config_arguments(parser: Any, cls: type) -> None:
    """One flag per field of the dataclass `cls`, in field order (also used by `vlm-vision eval`)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        flag, kwargs = _argument(field, hints[field.name], docs.get(field.name, ""))
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the `TrainConfig` of parsed flags.

    Raises:
        ValueError: naming the required flags that are missing.
    """
    fields = dataclasses.fields(TrainConfig)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [_flag(name) for name in required if not getattr(args, name)]
    if missing:
        raise ValueError(f"missing required flags for training: {' '.join(missing)}")
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields})


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.merge:
        from vlm_vision.trained import merge_trained

        if not args.merge_output:
            print("vlm-vision train: --merge needs --merge-output DIR")
            return 2
        out = merge_trained(args.merge, args.merge_output, llava_next_video_dir=args.llava_next_video)
        print(f"merged model written to {out}")
        return 0
    from vlm_vision.training import train

    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"vlm-vision train: {e}")
        return 2
    final = train(config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"trained model written to {final}")
    return 0
