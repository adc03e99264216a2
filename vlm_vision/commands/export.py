"""`vlm-vision export RUN --out DIR`: a trained model for transformers and vLLM, or LLaVA's projector file.

    vlm-vision export runs/stage2/final --out runs/export                       # transformers folder
    vlm-vision export runs/stage1/final --out runs/projector --format llava-projector
    vlm-vision export runs/stage2/checkpoint-200 --out runs/export --overwrite

The work is `vlm_vision.export.folder.export_model`; this module only maps flags onto `ExportSettings`.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from vlm_vision.export.files import FORMATS  # no torch: `--help` stays fast
from vlm_vision.commands.input_checks import check_model_folder, check_output_folder

if TYPE_CHECKING:  # the settings class imports torch; only its type is named here
    from vlm_vision.export.folder import ExportSettings

__all__ = ["add_arguments", "run", "settings_from_args"]

_SHARD_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)?$", re.IGNORECASE)  # transformers' "5GB", "500MiB", or bytes


def shard_size(text: str) -> str:
    """`--max-shard-size` as transformers reads it: a number of bytes, or one with KB/MB/GB/TB (or KiB...)."""
    if not _SHARD_SIZE.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: expected bytes or a number with KB, MB, GB "
                                         f"or TB (e.g. 5GB)")
    return text.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN, --out, --format, --overwrite, --max-shard-size."""
    parser.add_argument("run", metavar="RUN",
                        help="a training run's final/ or checkpoint-N/ (LoRA or merged, any stage or sharding), a "
                             "merged model, a transformers LLaVA folder, or an original LLaVA / LLaVA-NeXT(-Video) "
                             "checkpoint folder (<image>/<video> tokens are added)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (written atomically)")
    parser.add_argument("--format", choices=FORMATS, default="llava-next-video",
                        help="llava-next-video: a complete transformers folder (weights, config, tokenizer, chat "
                             "template, processors, model card); llava-projector: LLaVA's mm_projector.bin "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--max-shard-size", default="5GB", type=shard_size, help="largest safetensors shard (default: %(default)s)")


def settings_from_args(args: argparse.Namespace) -> "ExportSettings":
    """The typed settings of parsed flags."""
    from vlm_vision.export.folder import ExportSettings  # lazy: torch and transformers stay off `--help`

    return ExportSettings(run=args.run, out=args.out, format=args.format, overwrite=args.overwrite,
                          max_shard_size=args.max_shard_size)


def run(args: argparse.Namespace) -> int:
    """Check the inputs, then export; 0 on success (an `InputError` becomes exit 2 in `vlm_vision.commands.main.main`)."""
    from vlm_vision.export.folder import export_model  # lazy: torch and transformers stay off `--help`

    check_model_folder(args.run, "RUN")  # before torch loads: the folder and the weights it names
    check_output_folder(args.out, "--out")
    out = export_model(settings_from_args(args))
    print(f"{args.format} export written to {out}")
    return 0
