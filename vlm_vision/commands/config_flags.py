"""Command-line flags derived from a config dataclass, so that no CLI lists its settings by hand.

A field `max_length` is the flag `--max-length`; its type and default come from the dataclass,
its help is the docstring written under the field, and `metadata["choices"]` become the flag's
choices. A bool field is a pair of flags (`--resume/--no-resume`); a tuple field takes several
values. A field whose value needs its own text format gets a parser from the caller (`parsers`).
Used by `vlm-vision train` (`TrainConfig`) and `vlm-vision eval` (`EvalConfig`); light to import,
so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from vlm_vision.errors import InputError

__all__ = ["Parsers", "add_config_arguments", "config_from_flags", "field_docs", "flag", "missing_flags"]

# field name -> (text parser, metavar), for fields that are not a plain int, float, str, bool or tuple[str, ...]
Parsers = Mapping[str, tuple[Callable[[str], Any], str]]


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of the dataclass `cls`, whitespace collapsed.

    Example:
        >>> from vlm_vision.training.config import TrainConfig
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


def flag(name: str) -> str:
    """The flag of a field: `max_length` -> `--max-length`."""
    return "--" + name.replace("_", "-")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None  # a required field: checked by `missing_flags`, so that the message names every missing flag at once


def _without_none(hint: Any) -> Any:
    """`X` of `X | None`; `hint` itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _argument(field: dataclasses.Field, hint: Any, doc: str, parsers: Parsers) -> tuple[str, dict[str, Any]]:
    """`add_argument`'s flag and keyword arguments for one config field.

    Raises:
        TypeError: for a field type the CLI cannot parse (give it a parser in `parsers`).
    """
    default = _default(field)
    kwargs: dict[str, Any] = {"default": default, "dest": field.name}
    hint = _without_none(hint)
    if field.name in parsers:
        kwargs["type"], kwargs["metavar"] = parsers[field.name]
    elif hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif hint in (int, float, str):
        kwargs["type"] = hint
    elif typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        kwargs["type"], kwargs["nargs"] = typing.get_args(hint)[0], "+"
    else:
        raise TypeError(f"config field {field.name}: no flag for type {hint!r}; give it a parser in `parsers`")
    if "choices" in field.metadata:
        kwargs["choices"] = field.metadata["choices"]
    shown = f" (default: {' '.join(default) if isinstance(default, tuple) else default})"
    kwargs["help"] = doc.replace("%", "%%") + (shown if default is not None else "")  # argparse formats help with %
    return flag(field.name), kwargs


def add_config_arguments(parser: Any, cls: type, parsers: Parsers | None = None) -> None:
    """One flag per field of the dataclass `cls`, in field order.

    Args:
        parser: an `argparse.ArgumentParser` or one of its argument groups.
        cls: the config dataclass.
        parsers: field name -> (text parser, metavar) for fields of another type.

    Raises:
        TypeError: for a field type with no flag and no parser.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        name, kwargs = _argument(field, hints[field.name], docs.get(field.name, ""), parsers or {})
        parser.add_argument(name, **kwargs)


def missing_flags(args: argparse.Namespace, cls: type) -> list[str]:
    """The flags of `cls`'s required fields (no default) that `args` leaves empty, in field order."""
    return [flag(f.name) for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            and not getattr(args, f.name)]


def config_from_flags(args: argparse.Namespace, cls: type) -> Any:
    """The config `cls` of parsed flags; a missing or refused value is an `InputError` naming its flag.

    Raises:
        InputError: naming the missing required flags, or the flag whose value the config refuses
            (its `__post_init__` raised `ValueError`, e.g. "batch_size must be a positive int, got 0").
    """
    missing = missing_flags(args, cls)
    if missing:
        raise InputError("missing required flags", " ".join(missing), "a value for each (see --help)")
    names = [f.name for f in dataclasses.fields(cls)]
    try:
        return cls(**{name: getattr(args, name) for name in names})
    except InputError:
        raise
    except ValueError as e:
        text = str(e)
        named = [name for name in names if text.startswith(name) or f" {name}" in text]
        source = " ".join(f"{flag(n)} {_shown(getattr(args, n))}" for n in named[:2]) or "the flags"
        raise InputError("bad value", source, text) from None


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
