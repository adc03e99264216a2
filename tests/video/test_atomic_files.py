"""Atomic writes: an interrupted write leaves the old file, and only dead writers' temporaries are stale."""

from __future__ import annotations

import os

import pytest

from video.atomic_files import atomic_dir, temporary_files, write_atomic


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise KeyboardInterrupt  # as if the process were stopped between writing and renaming

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert temporary_files(target) == []


def test_temporary_files_of_a_live_writer_are_not_stale(tmp_path):
    target = tmp_path / "x.safetensors"
    live = tmp_path / f".x.safetensors.{os.getppid()}.abc.tmp"  # our parent: alive
    dead = tmp_path / ".x.safetensors.999999999.def.tmp"
    old = tmp_path / ".x.safetensors.ghi.tmp"  # a name from before pids were in it
    for p in (live, dead, old):
        p.write_bytes(b"")
    assert temporary_files(target) == sorted([live, dead, old])
    assert temporary_files(target, stale_only=True) == sorted([dead, old])


def test_atomic_dir_replaces_a_folder_only_when_the_block_finishes(tmp_path):
    target = tmp_path / "final"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"old")
    assert (target / "weights.bin").read_bytes() == b"old"
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            raise RuntimeError("crash")
    assert (target / "weights.bin").read_bytes() == b"old"  # the previous folder is intact
    with atomic_dir(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporary or old folder left
    assert (target / "sub" / "weights.bin").read_bytes() == b"new" and not (target / "weights.bin").exists()
