"""`vlm-vision report`'s flags: their defaults are `ReportConfig`'s, and the flags build that config."""

from __future__ import annotations

import argparse
import dataclasses

from vlm_vision.commands.config_flags import config_from_flags
from vlm_vision.commands.report import add_arguments
from vlm_vision.evaluation.report import ReportConfig


def test_flags_default_to_the_config_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for field in dataclasses.fields(ReportConfig):
        if field.default is not dataclasses.MISSING:
            assert parser.get_default(field.name) == field.default, field.name
    assert config_from_flags(parser.parse_args(["evals/s2"]), ReportConfig) == ReportConfig(eval_dir="evals/s2")
    args = parser.parse_args(["e", "--page-size", "10", "--no-progress", "--compare", "f"])
    assert config_from_flags(args, ReportConfig) == ReportConfig(eval_dir="e", compare="f", page_size=10,
                                                                 progress=False)
