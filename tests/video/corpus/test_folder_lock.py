"""One run per output folder: the lock is exclusive, names its holder, and outlives no process."""

from __future__ import annotations

import json
import os
import socket

import pytest

from video.corpus.folder_lock import FolderBusy, FolderLock


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with FolderLock(tmp_path) as first:
        content = json.loads(first.path.read_text())
        assert content["pid"] == os.getpid() and content["host"] == socket.gethostname()
        with pytest.raises(FolderBusy, match=f"in use by another extraction run \\(pid {os.getpid()} on host"):
            FolderLock(tmp_path).acquire()
        assert first.previous is None
    assert not first.path.exists()
    with FolderLock(tmp_path):  # free again
        pass


def test_a_lock_file_left_by_a_dead_run_is_taken_over(tmp_path):
    left = {"pid": 999999999, "host": "elsewhere", "started": "2026-11-28T00:00:00"}
    (tmp_path / ".vlm-vision-extract.lock").write_text(json.dumps(left))
    with FolderLock(tmp_path) as lock:
        assert lock.previous == left
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
