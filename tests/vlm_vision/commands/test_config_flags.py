"""Flags built from a config dataclass: names, types, defaults, help, choices, parsers, required fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from vlm_vision.commands.config_flags import add_config_arguments, field_docs, flag, missing_flags


@dataclasses.dataclass
class Settings:
    data: tuple[str, ...]
    """Data files."""
    max_length: int | None = None
    """Longest   sequence (100% of the context when unset)."""
    mode: str = dataclasses.field(default="max", metadata={"choices": ("max", "average")})
    """Pooling mode."""
    progress: bool = True
    """Show a progress bar."""
    size: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    """A size as "HxW"."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Settings, {"size": (lambda text: [int(v) for v in text.split("x")], "HxW")})
    return parser


def test_docs_flags_and_defaults():
    assert field_docs(Settings)["max_length"] == "Longest sequence (100% of the context when unset)."
    assert flag("max_length") == "--max-length"
    args = _parser().parse_args([])
    assert (args.data, args.max_length, args.mode, args.progress, args.size) == (None, None, "max", True, [1, 2])
    assert "100%% of the context" in {a.dest: a.help for a in _parser()._actions}["max_length"]  # argparse escapes


def test_each_kind_of_field_parses():
    args = _parser().parse_args(["--data", "a.json", "b.json", "--max-length", "64", "--mode", "average",
                                 "--no-progress", "--size", "3x4"])
    assert (args.data, args.max_length, args.mode, args.progress, args.size) == (
        ["a.json", "b.json"], 64, "average", False, [3, 4])
    with pytest.raises(SystemExit):
        _parser().parse_args(["--mode", "median"])


def test_missing_flags_names_the_required_fields_left_empty():
    assert missing_flags(_parser().parse_args([]), Settings) == ["--data"]
    assert missing_flags(_parser().parse_args(["--data", "a.json"]), Settings) == []


def test_a_field_type_without_a_parser_is_refused():
    with pytest.raises(TypeError, match="size: no flag for type"):
        add_config_arguments(argparse.ArgumentParser(), Settings)
