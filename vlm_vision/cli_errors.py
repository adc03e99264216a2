"""Bad input as one line: the error every `vlm-vision` command raises for the user's mistakes.

A command (or anything below it) raises `InputError` when the input is at fault: a missing or
unreadable file, a bad format, a bad value, a folder that is not what it claims, weights that are
not on this machine. `vlm_vision.cli.main` catches it, prints
`vlm-vision COMMAND: <what> (<the input>): <what was expected>` (and a hint), and exits 2. Every
other exception is a bug and keeps its traceback (exit 1). `--debug` or `VLM_VISION_DEBUG=1` shows
the traceback of an input error too.
"""

from __future__ import annotations

import os

__all__ = ["EXIT_INPUT", "InputError", "debug_enabled"]

EXIT_INPUT = 2  # the exit code of a usage or input error (argparse's own)


class InputError(Exception):
    """The user's input is wrong; the command prints `line(command)` and exits 2.

    Args:
        what: what is wrong, e.g. "not a JSON file".
        source: the input at fault (a path, a flag and its value, a Hub id).
        expected: what was expected instead.
        hint: one more sentence on how to fix it (optional).
    """

    def __init__(self, what: str, source: object, expected: str, hint: str | None = None) -> None:
        self.what, self.source, self.expected, self.hint = what, str(source), expected, hint
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
