"""`vlm-vision train`'s flags are built from `TrainConfig`: one per field, typed, documented."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from vlm_vision import TrainConfig
from vlm_vision.commands.config_flags import field_docs
from vlm_vision.commands.train import add_arguments, config_from_args

BASE = ["--llm", "l", "--tower", "t", "--data", "d.jsonl", "--output-dir", "o"]


def parse(*flags: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args([*BASE, *flags]))


def test_every_field_is_a_documented_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {s for action in parser._actions for s in action.option_strings}
    docs = field_docs(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in flags, field.name
        assert docs.get(field.name), f"TrainConfig.{field.name} has no docstring"
    assert docs["grad_accum"] == "Micro-batches per optimizer step."


def test_no_flags_give_the_config_defaults():
    assert parse() == TrainConfig(llm="l", tower="t", data="d.jsonl", output_dir="o")


def test_flags_of_each_kind():
    cfg = parse("--stage", "2", "--lr", "1e-3", "--no-progress", "--gradient-checkpointing", "--resume",
                "--lora-targets", "q_proj", "v_proj", "--pool-mode", "max", "--media-root", "m")
    assert (cfg.stage, cfg.lr, cfg.progress, cfg.gradient_checkpointing, cfg.resume) == (2, 1e-3, False, True, True)
    assert cfg.lora_targets == ("q_proj", "v_proj") and cfg.pool_mode == "max" and cfg.media_root == "m"


@pytest.mark.parametrize("flags", [("--stage", "3"), ("--pool-mode", "median"), ("--mixed-precision", "fp8"),
                                   ("--max-steps", "many")])
def test_bad_values_are_refused_by_the_parser(flags):
    with pytest.raises(SystemExit):
        parse(*flags)


def test_missing_required_flags_are_named():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="--tower --data --output-dir"):
        config_from_args(parser.parse_args(["--llm", "l"]))


def test_integrity_flags():
    cfg = parse("--max-skip-fraction", "0.2", "--accept-foreign-tokens")
    assert cfg.max_skip_fraction == 0.2 and cfg.accept_foreign_tokens is True
    assert parse().accept_foreign_tokens is False and parse().max_skip_fraction == 0.05
