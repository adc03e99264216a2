"""One extraction run per output folder.

Two runs writing into one folder would redo each other's videos and remove each other's temporary
files. A run therefore holds `OUT/.vlm-vision-extract.lock` for its whole length: an `fcntl.flock`
on the file, which the kernel releases when the process ends however it ends, and in the file the
holder's pid, host and start time so that a refused run can say who holds it. A lock file whose
flock nobody holds was left by a run that died: the next run takes it over and says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

__all__ = ["FolderBusy", "FolderLock"]

LOCK_NAME = ".vlm-vision-extract.lock"


class FolderBusy(RuntimeError):
    """Another live run holds the output folder's lock."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder; `acquire` fails at once when it is held.

    Attributes:
        path: the lock file.
        previous: what the lock file said when this run took it over from a dead run, else None.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self.previous: dict | None = None
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock, or raise FolderBusy naming its holder."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise FolderBusy(f"{self.path.parent} is in use by another extraction run ({_describe(holder)}; "
                                 f"lock file {self.path}); wait for it to finish or use another --out") from None
            # The holder we waited for may have removed the file before we locked it: lock the file
            # that is there now.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = _read(fd)
        self.previous = left or None  # a file with content but no flock: its run died
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (the file goes first, then the flock)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe(info: dict) -> str:
    if not info or "pid" not in info:
        return "holder unknown"
    return f"pid {info['pid']} on host {info.get('host')}, started {info.get('started')}"
