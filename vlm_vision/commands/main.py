"""The `vlm-vision` console command.

Each subcommand is one module of `vlm_vision.commands` (its flags, the checks of its input, and the
call into the job that does the work) and exposes two functions: `add_arguments(parser)` and
`run(args) -> int`. This file only wires them together, importing a
subcommand's module when that subcommand runs so `vlm-vision --help` stays fast.

Exit codes: 0 success; 1 a bug (with its traceback) or, for batch commands, items that failed; 2 bad
input or usage (`vlm_vision.errors.InputError`: one line, no traceback); 130 interrupted
(Ctrl-C: one line, and how to resume when the command can resume: the module's `RESUME_HINT`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed

from vlm_vision.errors import EXIT_INPUT, EXIT_INTERRUPTED, InputError, debug_enabled, process_rank

# In a multi-process run, the seconds the other processes wait before exiting with an input error the
# first one prints: torchrun stops every process as soon as one exits, which could be before the line.
PEER_EXIT_DELAY_S = 3.0

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("vlm_vision.commands.extract", "extract per-frame pooled video tokens for one clip or a corpus"),
    "train": ("vlm_vision.commands.train", "train the projector (stage 1) and LoRA on the LLM (stage 2)"),
    "clip-train": ("vlm_vision.commands.clip_train", "contrastive fine-tuning of CLIP on image/video-text pairs"),
    "convert-data": ("vlm_vision.commands.data", "write training data of any accepted shape as one LLaVA JSON list"),
    "data-stats": ("vlm_vision.commands.data_stats", "what training would keep, skip and cut in a data spec; token histogram"),
    "eval": ("vlm_vision.commands.eval", "answer video questions with a trained model; accuracy, per category"),
    "export": ("vlm_vision.commands.export", "write a trained model as a transformers folder (or LLaVA's projector file)"),
    "report": ("vlm_vision.commands.report", "an HTML page of an eval folder: frames, answers, scores, filters"),
    "demo": ("vlm_vision.commands.demo", "a local web page to ask a model questions about a video"),
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
    """Run `vlm-vision COMMAND ...`; the exit code (0 success, 1 a bug or failed items, 2 usage or bad input,
    130 interrupted)."""
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
    module = None
    try:
        module = importlib.import_module(module_name)
        sub = argparse.ArgumentParser(prog=f"vlm-vision {name}", description=help_text)
        module.add_arguments(sub)
        args = sub.parse_args(rest)
        return int(module.run(args) or 0)
    except InputError as e:  # the user's input, not a bug: one line, exit 2 (the traceback with --debug)
        _close_progress_bars()
        rank = process_rank()
        if rank == 0 or e.rank_only or debug:
            if debug:
                traceback.print_exc()
            prefix = f"[rank {rank}] " if rank else ""
            print(prefix + e.line(name), file=sys.stderr)
        else:  # the first process prints it: exit after it, as a launcher stops the others at the first exit
            time.sleep(PEER_EXIT_DELAY_S)
        return EXIT_INPUT
    except KeyboardInterrupt:  # Ctrl-C: what was half-written has been removed on the way up
        _close_progress_bars()
        if debug:
            traceback.print_exc()
        if process_rank() == 0:
            resume = getattr(module, "RESUME_HINT", None)
            print(f"vlm-vision {name}: interrupted" + (f"; {resume}" if resume else ""), file=sys.stderr)
        return EXIT_INTERRUPTED

def _close_progress_bars() -> None:
    """Close the progress bars a stopped command left open, so that its last line stays the last one."""
    if "tqdm" not in sys.modules:  # no bar was ever made (and importing tqdm here would cost start-up)
        return
    from tqdm import tqdm  # lazy: already imported by the command (checked above)

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
