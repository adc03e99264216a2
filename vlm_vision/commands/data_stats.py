"""`vlm-vision data-stats DATA`: its flags, the checks of its inputs, and the call into
`vlm_vision.training.data_stats` (what a training run would keep, skip and cut in a data spec)."""

from __future__ import annotations

import argparse
import dataclasses

from vlm_vision.commands.config_flags import flag
from vlm_vision.commands.input_checks import (
    check_data_spec,
    check_folder,
    check_output_folder,
    check_weights,
    weights_errors,
)
from vlm_vision.errors import InputError
from vlm_vision.training.data_stats import DataStatsSettings, data_stats, summary

__all__ = ["add_arguments", "check_data_stats_inputs", "run", "settings_from_args"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataStatsSettings)}  # the flags' defaults, written once there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `vlm-vision data-stats` (their defaults are `DataStatsSettings`'s)."""
    parser.add_argument("data", help="a .json/.jsonl file, a prefix{a,b}.json pattern or a LLaVA-NeXT .yaml mixture")
    parser.add_argument("--llm", required=True, help="the LLM (its tokenizer and context) as `train --llm`")
    parser.add_argument("--tower", required=True, help="the vision tower as `train --tower` (its token grid)")
    parser.add_argument("--output-dir", default=_DEFAULTS["output_dir"],
                        help="stats, picture and the scan cache (`data-scan/`); a run's --output-dir shares the cache")
    parser.add_argument("--num-frames", type=int, default=_DEFAULTS["num_frames"],
                        help="frames per raw video, as `train --num-frames`")
    parser.add_argument("--max-length", type=int, default=_DEFAULTS["max_length"],
                        help="as `train --max-length` (default: LLM context)")
    parser.add_argument("--pool-stride", type=int, default=_DEFAULTS["pool_stride"], help="as `train --pool-stride`")
    for name in ("media_root", "image_folder", "video_folder"):
        parser.add_argument(flag(name), default=_DEFAULTS[name], help=f"as `train {flag(name)}`")
    parser.add_argument("--seed", type=int, default=_DEFAULTS["seed"], help="seed of a mixture's random:N sampling")
    parser.add_argument("--workers", type=int, default=_DEFAULTS["workers"], help="processes that share the scan")
    parser.add_argument("--bins", type=int, default=_DEFAULTS["bins"], help="bars of the token-length histogram")


def settings_from_args(args: argparse.Namespace) -> DataStatsSettings:
    """The `DataStatsSettings` of the parsed flags of the same names."""
    return DataStatsSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataStatsSettings)})


def check_data_stats_inputs(settings: DataStatsSettings) -> None:
    """Everything that can be checked before the tokenizer and the tower load and the data is scanned.

    Raises:
        InputError: naming the flag and its value (numbers, output folder, media folders, data files, weights).
    """
    for name in ("num_frames", "max_length", "pool_stride", "workers", "bins"):
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise InputError("not a positive number", f"{flag(name)} {value}", "a positive int")
    check_output_folder(settings.output_dir, "--output-dir")
    for path, name in ((settings.media_root, "--media-root"), (settings.image_folder, "--image-folder"),
                       (settings.video_folder, "--video-folder")):
        check_folder(path, name, "an existing folder that the data's media paths are relative to")
    check_data_spec(settings.data, "DATA")
    check_weights(settings.llm, "--llm", what="LLM weights")
    check_weights(settings.tower, "--tower", what="tower weights")


def run(args: argparse.Namespace) -> int:
    """Scan, print the summary, write `data_stats.json` and `token_lengths.png`; 0 on success."""
    settings = settings_from_args(args)
    check_data_stats_inputs(settings)
    with weights_errors({"--llm": settings.llm}, "LLM weights"), weights_errors({"--tower": settings.tower},
                                                                                 "tower weights"):
        stats = data_stats(settings)
    print(summary(stats))
    return 0
