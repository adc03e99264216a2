"""Atomic file writes: a file either does not exist or is complete, and leftovers are findable.

`write_atomic` writes the bytes to a temporary file in the target's folder, flushes them to disk
(`fsync`) and renames the file over the target (`os.replace`, atomic on one file system): a
reader, or a resumed run, never sees half a file, and a crash leaves the old file in place.

The temporary name is `.<name>.<pid>.<random>.tmp`: unique per process and write, hidden, and the
writer's pid tells a later clean-up (`temporary_files(..., stale_only=True)`) whether the writer
may still be alive, so a run never removes another live run's temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["TMP_SUFFIX", "temporary_files", "write_atomic"]

TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`.

    The folder is created when missing. On any exception (KeyboardInterrupt included) the
    temporary file is removed and `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_files(path: Path, *, stale_only: bool = False) -> list[Path]:
    """Temporary files of `write_atomic(path, ...)`; with `stale_only`, only those whose writer
    is not a live process on this machine (left by an interrupted run; safe to remove)."""
    found = sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"))
    return [p for p in found if not _writer_alive(p, path.name)] if stale_only else found


def _writer_alive(temporary: Path, name: str) -> bool:
    """True when the pid in `.<name>.<pid>.<random>.tmp` is another live process."""
    pid = temporary.name[len(name) + 2:].split(".", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
