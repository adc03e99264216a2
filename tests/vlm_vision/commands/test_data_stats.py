"""`vlm-vision data-stats`'s flags: their defaults are `DataStatsSettings`'s, and the flags build those settings."""

from __future__ import annotations

import argparse
import dataclasses

from vlm_vision.commands.data_stats import add_arguments, settings_from_args
from vlm_vision.training.data_stats import DataStatsSettings


def test_flags_default_to_the_settings_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for field in dataclasses.fields(DataStatsSettings):
        if field.default is not dataclasses.MISSING:
            assert parser.get_default(field.name) == field.default, field.name
    args = parser.parse_args(["d.json", "--llm", "l", "--tower", "t", "--video-folder", "v", "--bins", "8"])
    assert settings_from_args(args) == DataStatsSettings(data="d.json", llm="l", tower="t", video_folder="v", bins=8)
