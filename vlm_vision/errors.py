"""Bad input as one line: the error every `vlm-vision` command raises for the user's mistakes.

A command (or anything below it) raises `InputError` when the input is at fault: a missing or
unreadable file, a bad format, a bad value, a folder that is not what it claims, weights that are
not on this machine. `vlm_vision.commands.main.main` catches it, prints
`vlm-vision COMMAND: <what> (<the input>): <what was expected>` (and a hint), and exits 2. Every
other exception is a bug and keeps its traceback (exit 1). `--debug` or `VLM_VISION_DEBUG=1` shows
the traceback of an input error too.

`InputError` is a `ValueError`, so library callers that catch `ValueError` for a bad value keep
working when a reader raises it.

In a run of several processes (`accelerate launch`, `torchrun`: `RANK` is set) every process exits
2, and only the first prints the line, since every process checks the same inputs and finds the
same mistake; an error raised with `rank_only=True` (a mistake only one process sees, such as its
own device) is printed by the process that has it, prefixed with its rank.

Ctrl-C stops a command with exit 130 (`EXIT_INTERRUPTED`, the shell's 128 + SIGINT) and one line.
"""

from __future__ import annotations

import os

__all__ = ["EXIT_INPUT", "EXIT_INTERRUPTED", "InputError", "debug_enabled", "process_rank"]

EXIT_INPUT = 2  # the exit code of a usage or input error (argparse's own)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class InputError(ValueError):
    """The user's input is wrong; the command prints `line(command)` and exits 2.

    Args:
        what: what is wrong, e.g. "not a JSON file".
        source: the input at fault (a path, a flag and its value, a Hub id).
        expected: what was expected instead.
        hint: one more sentence on how to fix it (optional).
        rank_only: the mistake concerns this process only (printed by every process that has it);
            by default every process finds the same mistake and only the first prints it.
    """

    def __init__(self, what: str, source: object, expected: str, hint: str | None = None, *,
                 rank_only: bool = False) -> None:
        self.what, self.source, self.expected, self.hint = what, str(source), expected, hint
        self.rank_only = rank_only
        super().__init__(self.message())

    def message(self) -> str:
        """`<what> (<source>): <expected>[ hint]`, one line (a hint may add a second)."""
        text = f"{self.what} ({self.source}): {self.expected}"
        return f"{text}\n  {self.hint}" if self.hint else text

    def line(self, command: str) -> str:
        """The text printed for `command`: `vlm-vision COMMAND: ...`."""
        return f"vlm-vision {command}: {self.message()}"


def debug_enabled() -> bool:
    """True when `VLM_VISION_DEBUG` is set to a non-empty value other than 0."""
    return os.environ.get("VLM_VISION_DEBUG", "") not in ("", "0")


def process_rank() -> int:
    """This process's index in a multi-process launch (`RANK`, set by torchrun and accelerate), else 0."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0
