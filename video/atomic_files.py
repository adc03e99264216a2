"""Atomic file writes: a file either does not exist or is complete, and leftovers are findable.

`write_atomic` writes the bytes to a temporary file in the target's folder, flushes them to disk
(`fsync`) and renames the file over the target (`os.replace`, atomic on one file system): a
reader, or a resumed run, never sees half a file, and a crash leaves the old file in place.

The temporary name is `.<name>.<pid>.<random>.tmp`: unique per process and write, hidden, and the
writer's pid tells a later clean-up (`temporary_files(..., stale_only=True)`) whether the writer
may still be alive, so a run never removes another live run's temporary file.

Folders (a trained model, a training checkpoint) get the same promise from `atomic_dir` and
`replace_dir`: the folder is written under a temporary name beside its target, every file and
folder in it is flushed to disk, and it is renamed into place; a crash mid-write leaves the
previous folder intact, never half of a new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TMP_SUFFIX", "atomic_dir", "fsync_tree", "replace_dir", "temporary_files", "write_atomic"]

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


# ----- folders ------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a folder is opened read-only to flush its entries
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and every folder's entries, to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing an older `dst`.

    `src` is flushed to disk first, and `dst`'s parent after the rename, so that a crash after
    the rename cannot leave a folder whose files are not on disk. `os.replace` cannot swap a
    non-empty folder in one step, so an old `dst` is first renamed aside and removed after the new
    one is in place; at every instant `dst` is either absent (for the moment between two renames)
    or complete. Stopped before the rename (Ctrl-C while flushing), `src` is removed: nothing
    half-moved is left behind.
    """
    src, dst = Path(src), Path(dst)
    try:
        fsync_tree(src)
    except BaseException:
        shutil.rmtree(src, ignore_errors=True)
        raise
    old = dst.with_name(f".old-{dst.name}")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_path(dst.parent)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Write a folder under a temporary name beside `path`; rename it to `path` only on success.

    Example:
        >>> with atomic_dir(out / "final") as tmp:  # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)
