"""The `vlm-vision` console command.

Each subcommand lives in the module that does the work and exposes two functions:
`add_arguments(parser)` and `run(args) -> int`. This file only wires them together, importing a
subcommand's module when that subcommand runs so `vlm-vision --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed

from vlm_vision.cli_errors import EXIT_INPUT, InputError, debug_enabled

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("vlm_vision.extract_cli", "extract per-frame pooled video tokens for one clip or a corpus"),
    "train": ("vlm_vision.train_cli", "train the projector (stage 1) and LoRA on the LLM (stage 2)"),
    "clip-train": ("vlm_vision.clip_train", "contrastive fine-tuning of CLIP on image/video-text pairs"),
    "convert-data": ("vlm_vision.data_cli", "write training data of any accepted shape as one LLaVA JSON list"),
    "data-stats": ("vlm_vision.data_stats", "what training would keep, skip and cut in a data spec; token histogram"),
    "eval": ("vlm_vision.eval_run", "answer video questions with a trained model; accuracy, per category"),
}


def version() -> str:
    """The installed package's version ("unknown" when run from a source tree that is not installed)."""
    try:
        return installed("vlm-vision")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: `--version` and one (help-only) entry per subcommand."""
    parser = argparse.ArgumentParser(prog="vlm-vision", description="Vision components of a LLaVA-style VLM.")
    parser.add_argument("--version", action="version", version=f"vlm-vision {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `vlm-vision COMMAND ...`; the exit code (0 success, 2 usage or bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "--version":
        print(f"vlm-vision {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"vlm-vision: unknown command {argv[0]!r}; choose from {sorted(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    debug = "--debug" in rest or debug_enabled()
    rest = [a for a in rest if a != "--debug"]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"vlm-vision {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except InputError as e:  # the user's input, not a bug: one line, exit 2 (the traceback with --debug)
        if debug:
            traceback.print_exc()
        print(e.line(name), file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
