"""Training records in one memory-mapped Arrow file per machine, built once, shared by every process.

A million records held as Python dicts cost about 3 KB each in every process, and every DataLoader
worker slowly copies the ones it reads (reference counts write to the pages the dicts live on). Here
the records of a data spec are written once, as Arrow columns, to `<cache_dir>/store-<key>.arrow`
and opened memory-mapped (Hugging Face `datasets`' `Dataset.from_file`): a process pays only for the
pages it reads, reading writes nothing, and the page cache holds one copy for all processes on the
machine. A record is decoded from its JSON text when it is indexed.

Columns, one row per record of every file, in file order:

- `text`: the record's JSON text exactly as the file holds it (null for a JSONL line that is not JSON);
- `error`: why that line was refused (null otherwise);
- `position`: list index in a JSON file, line number in a JSONL file;
- `file`: which file of the spec.

The key hashes each file's identity (resolved path, size, mtime and a hash of its first and last
MiB: `video.provenance.source_identity`, the token files' scheme) and this module's version, so a
changed file gives another store. The mixture's sampling is applied when the store is opened (an
index of the selected rows), so the same store serves every seed and strategy.

A JSON list is read in chunks (`iter_json_list`), so building holds one chunk and one batch of
rows, not every record.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from video.provenance import source_identity
from vlm_vision.data.files import Skipped, data_files, sample_positions

__all__ = ["RecordStore", "STORE_VERSION", "file_identities", "iter_json_list", "open_store"]

STORE_VERSION = 1
_CHUNK = 16 << 20  # characters of a JSON list decoded at a time
_BATCH = 8192  # rows per Arrow record batch
_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def iter_json_list(path: Path, chunk: int = _CHUNK) -> Iterator[str]:
    """The JSON text of each element of a file holding one JSON list, read `chunk` characters at a time.

    Raises:
        ValueError: when the file is not a JSON list (naming the file and the offset).
    """
    with open(path, encoding="utf-8") as f:
        buf, pos, done, offset = f.read(chunk), 0, False, 0
        done = len(buf) < chunk
        pos = _skip_space(buf, 0)
        if pos >= len(buf) or buf[pos] != "[":
            raise ValueError(f"data file {path} must hold a JSON list of records; use .jsonl for one record per line")
        pos, first = pos + 1, True
        while True:
            pos = _skip_space(buf, pos)
            while pos >= len(buf) - 1 and not done:  # keep a look-ahead character
                buf, pos, offset, done = _refill(f, buf, pos, offset, chunk)
                pos = _skip_space(buf, pos)
            if pos < len(buf) and buf[pos] == "]":
                return
            if not first:
                if pos >= len(buf) or buf[pos] != ",":
                    raise ValueError(f"data file {path} is not valid JSON: expected ',' or ']' at character "
                                     f"{offset + pos}")
                pos = _skip_space(buf, pos + 1)
            first = False
            while True:
                try:
                    _, end = _DECODER.raw_decode(buf, pos)
                    if end < len(buf) or done:
                        break
                except json.JSONDecodeError as e:
                    if done:
                        raise ValueError(f"data file {path} is not valid JSON: {e.msg} at character "
                                         f"{offset + e.pos}") from None
                buf, pos, offset, done = _refill(f, buf, pos, offset, chunk)
            yield buf[pos:end]
            pos = end


def _skip_space(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in _SPACE:
        pos += 1
    return pos


def _refill(f: Any, buf: str, pos: int, offset: int, chunk: int) -> tuple[str, int, int, bool]:
    """Drop what was read, append the next chunk: (buffer, position, its file offset, end of file)."""
    more = f.read(max(chunk, len(buf) - pos))
    return buf[pos:] + more, 0, offset + pos, not more


def file_identities(files: list[Path]) -> list[dict[str, Any]]:
    """`source_identity` of each data file (size, mtime, head-and-tail hash), for keys and resume checks.

    Raises:
        FileNotFoundError: for a file that does not exist.
    """
    out = []
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} does not exist")
        out.append(source_identity(path))
    return out


def _rows_of(path: Path) -> Iterator[tuple[str | None, str | None, int]]:
    """(text, error, position) of each record of a file."""
    if path.suffix != ".jsonl":
        for n, text in enumerate(iter_json_list(path)):
            yield text, None, n
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                yield None, f"line {n} is not valid JSON ({e.msg})", n
                continue
            yield line.strip(), None, n


def _build(files: list[Path], target: Path) -> None:
    """Write every record of `files` to the Arrow stream file `target` (atomically)."""
    import pyarrow as pa  # lazy: only building needs the writer

    schema = pa.schema([("text", pa.large_string()), ("error", pa.string()), ("position", pa.int64()),
                        ("file", pa.int32())])
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for file_no, path in enumerate(files):
                cols: tuple[list, list, list] = ([], [], [])
                for text, error, position in _rows_of(path):
                    for col, value in zip(cols, (text, error, position)):
                        col.append(value)
                    if len(cols[0]) >= _BATCH:
                        writer.write_batch(pa.record_batch([*cols, [file_no] * len(cols[0])], schema=schema))
                        cols = ([], [], [])
                if cols[0]:
                    writer.write_batch(pa.record_batch([*cols, [file_no] * len(cols[0])], schema=schema))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class RecordStore:
    """The selected records of a data spec, read from the memory-mapped store (see the module docstring).

    The same interface as `DataRows`: `len`, `raw(i)` (a dict, or a `Skipped` for a bad JSONL line),
    `source(i)`, `data_dir(i)`, `files`, `fingerprints`. Per record it holds 20 bytes of numpy
    arrays (which table row, its position and file); the texts stay in the mapped file.
    """

    def __init__(self, path: Path, files: list[Path], identities: list[dict[str, Any]],
                 strategies: list[str], seed: int):
        import datasets  # lazy: `vlm-vision --help` stays fast

        self.path = path
        self.dataset = datasets.Dataset.from_file(str(path), in_memory=False)
        table = self.dataset.data.table
        self._text, self._error = table.column("text"), table.column("error")
        file_of = table.column("file").to_numpy()
        positions = table.column("position").to_numpy()
        self.files = files
        self.identities = identities
        selected, self.fingerprints = [], []
        for file_no, strategy in enumerate(strategies):
            rows = np.flatnonzero(file_of == file_no)
            keep = sample_positions(len(rows), strategy, seed)
            picked = rows if len(keep) == len(rows) else rows[np.asarray(keep, dtype=np.int64)]
            selected.append(picked)
            ident = identities[file_no]
            chosen = hashlib.sha256(array("q", keep).tobytes()).hexdigest()[:16]
            self.fingerprints.append(f"{ident['source_fingerprint']}:{ident['source_size']}:"
                                     f"{ident['source_mtime_ns']}:{chosen}")
        self.rows = np.concatenate(selected) if selected else np.zeros(0, dtype=np.int64)  # table row of each
        self.positions = positions[self.rows]
        self.file_ids = file_of[self.rows].astype(np.int32)

    def __len__(self) -> int:
        return len(self.rows)

    def text(self, i: int) -> str | None:
        """Record `i`'s JSON text (None for a bad JSONL line)."""
        return self._text[int(self.rows[i])].as_py()

    def raw(self, i: int) -> Any:
        """Record `i` decoded, or a `Skipped` for a JSONL line that is not JSON."""
        text = self.text(i)
        if text is None:
            where = self.source(i)
            return Skipped(where, self._error[int(self.rows[i])].as_py(), where)
        return json.loads(text)

    def texts(self, start: int, stop: int) -> list[str | None]:
        """The JSON texts of records `start:stop` (a batch read for scans)."""
        rows = self.rows[start:stop]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # contiguous: one slice
            return self._text.slice(int(rows[0]), len(rows)).to_pylist()
        return self._text.take(rows).to_pylist()

    def source(self, i: int) -> str:
        path = self.files[int(self.file_ids[i])]
        sep = ":" if path.suffix == ".jsonl" else "#"
        return f"{path.name}{sep}{int(self.positions[i])}"

    def data_dir(self, i: int) -> Path:
        return self.files[int(self.file_ids[i])].parent

    def __getstate__(self) -> dict[str, Any]:  # spawned workers reopen the mapped file
        state = dict(self.__dict__)
        for name in ("dataset", "_text", "_error"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import datasets  # lazy: as in __init__

        self.__dict__.update(state)
        self.dataset = datasets.Dataset.from_file(str(self.path), in_memory=False)
        table = self.dataset.data.table
        self._text, self._error = table.column("text"), table.column("error")


def store_key(identities: list[dict[str, Any]]) -> str:
    """The store's cache key: this module's version and each file's identity."""
    return hashlib.sha256(json.dumps([STORE_VERSION, identities], sort_keys=True).encode()).hexdigest()[:24]


def open_store(spec: str | Path, cache_dir: str | Path, *, seed: int = 0, build: bool = True) -> RecordStore:
    """The store of a data spec: built into `cache_dir` unless a store of the same files is there.

    Args:
        build: False in processes that must not build (they wait for the machine's main process,
            then open what it built).

    Raises:
        FileNotFoundError: for a missing data file, or a store that is missing when `build` is False.
        ValueError: for a data file that is not a JSON list / JSONL, or a bad mixture.
    """
    entries = data_files(spec)
    files = [p.absolute() for p, _ in entries]  # media fall back to the file's folder, whatever the cwd
    identities = file_identities(files)
    path = Path(cache_dir) / f"store-{store_key(identities)}.arrow"
    if not path.is_file():
        if not build:
            raise FileNotFoundError(f"record store {path} was not built by the main process")
        path.parent.mkdir(parents=True, exist_ok=True)
        _build(files, path)
    return RecordStore(path, files, identities, [s for _, s in entries], seed)
