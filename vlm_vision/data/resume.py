"""A resumed run trains on the data it started with, or stops and says which file changed.

A run's checkpoints hold a position in its data order; the same position in a changed file is
other records. So the first start writes `data-files.json` in the output folder: for each data spec
(training's and eval's apart), each data file's identity (resolved path, size, mtime in ns, and a
SHA-256 of its size and first and last MiB, as `video.provenance` fingerprints a video for token
files) and each file's sampling strategy. A resume compares the files with it and refuses when one
differs, naming the file and the fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from video.atomic_files import write_atomic
from vlm_vision.errors import InputError
from vlm_vision.data.files import data_files
from vlm_vision.data.store import file_identities

__all__ = ["DATA_FILES_RECORD", "check_data_files", "data_identity"]

DATA_FILES_RECORD = "data-files.json"
_FIELDS = ("source_size", "source_mtime_ns", "source_fingerprint")


def data_identity(spec: str | Path) -> dict[str, Any]:
    """`{"spec", "files": [identity + strategy]}` of a data spec, as `data-files.json` records it."""
    entries = data_files(spec)
    files = file_identities([p.absolute() for p, _ in entries])
    return {"spec": str(spec), "files": [{**f, "strategy": s} for f, (_, s) in zip(files, entries)]}


def check_data_files(spec: str | Path, record: Path, *, resume: bool, write: bool) -> dict[str, Any]:
    """Compare a resumed run's data files with those its first start recorded; record them otherwise.

    Args:
        record: the run's `data-files.json` (one entry per data spec, keyed by the spec as given).
        resume: this start continues a run (a missing record is then written, as for a new run).
        write: this process writes the record (the main one).

    Raises:
        InputError: on a resume, when a data file was changed, replaced, removed or added.
    """
    now = data_identity(spec)
    recorded = json.loads(record.read_text()) if record.is_file() else {}
    recorded = recorded if isinstance(recorded.get("specs"), dict) else {"specs": {}}
    before = recorded["specs"].get(str(spec))  # a run's training and eval data are recorded apart
    if resume and before is not None:
        was = {f["source_path"]: f for f in before["files"]}
        for f in now["files"]:
            old = was.pop(f["source_path"], None)
            if old is None:
                recorded = ", ".join(sorted(x["source_path"] for x in before["files"]))
                raise InputError("a data file that the run did not start with", f["source_path"],
                                 f"the files recorded in {record} ({recorded})",
                                 hint="start a new run (another --output-dir) to train on other data")
            changed = [k for k in (*_FIELDS, "strategy") if old.get(k) != f.get(k)]
            if changed:
                detail = ", ".join(f"{k} {old.get(k)} -> {f.get(k)}" for k in changed)
                raise InputError("data file changed since the run began", f["source_path"],
                                 f"the file the run started with ({detail}); resuming would train on other records",
                                 hint="restore the file, or start a new run (another --output-dir)")
        if was:
            raise InputError("a data file of the run is no longer in the data spec", next(iter(was)),
                             f"every file recorded in {record}")
        return now
    if write:
        recorded["specs"][str(spec)] = now
        record.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(record, json.dumps(recorded, indent=1).encode())
    return now
