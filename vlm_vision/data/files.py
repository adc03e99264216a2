"""Data files and mixtures: which files a data spec names, how many records each keeps, reading them.

A data spec is a JSON list, JSONL (one record per line), a LLaVA-NeXT YAML mixture (`datasets:`,
each with a `json_path` and a `sampling_strategy` of `all`, `first:N`, `end:N` or `random:N`, N a
count or a percentage such as `10%`), or a `prefix{a,b}.json` pattern that names `prefixa.json`
and `prefixb.json`. `random:N` draws with `random.Random(seed)`, so a run and its resumption pick
the same records (LLaVA-NeXT shuffles with the unseeded global RNG).

Records are read as they are (`vlm_vision.data.formats` turns their shapes into one), each with
where it came from (`file.json#12`, the 13th record of the list, or `file.jsonl:13`, line 13), so
skips, logs and predictions name it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import random
import re
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_vision.errors import InputError

__all__ = ["DataRows", "STRATEGIES", "Skipped", "data_files", "load_rows", "no_cyclic_gc", "parse_strategy",
           "read_records", "sample_positions"]

STRATEGIES = ("all", "first", "end", "random")
_PATTERN = re.compile(r"^(.*)\{([^{}]*)\}\.json$")


@dataclass(frozen=True)
class Skipped:
    """A sample left out of training, with the reason and the file position it came from."""

    id: str
    reason: str
    source: str = ""



@dataclass
class DataRows:
    """Raw records of one data spec (several files after a mixture), with where each came from.

    `raws[i]` is the record as read (or a `Skipped` for a JSONL line that is not JSON); it came
    from `files[file_ids[i]]` at `positions[i]` (list index for JSON, line number for JSONL).
    """

    raws: list[Any] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    file_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    """Per file: content hash and the selected positions' hash (the scan cache's key)."""

    def __len__(self) -> int:
        return len(self.raws)

    def raw(self, i: int) -> Any:
        """Record `i` as read (a `Skipped` for a JSONL line that is not JSON)."""
        return self.raws[i]

    def source(self, i: int) -> str:
        path = self.files[self.file_ids[i]]
        sep = ":" if path.suffix == ".jsonl" else "#"
        return f"{path.name}{sep}{self.positions[i]}"

    def data_dir(self, i: int) -> Path:
        return self.files[self.file_ids[i]].parent


def data_files(spec: str | Path) -> list[tuple[Path, str]]:
    """The files a data spec names, each with its sampling strategy.

    Args:
        spec: a `.json`/`.jsonl` file, a `prefix{a,b}.json` pattern, or a `.yaml`/`.yml` mixture
            (relative `json_path`s are resolved against the YAML file's folder).

    Returns:
        [(file, strategy)], strategy "all" except in mixtures.

    Raises:
        InputError: for a mixture that does not exist, is not plain YAML (a `!!python/...` tag is
            refused: the file is read with `yaml.safe_load`), has no `datasets` list, an entry without
            `json_path` or with a bad `sampling_strategy`, or names a file that does not exist.

    Example:
        >>> data_files("data/llava_{a,b}.json")
        [(PosixPath('data/llava_a.json'), 'all'), (PosixPath('data/llava_b.json'), 'all')]
    """
    text = str(spec)
    match = _PATTERN.match(text)
    if match:
        prefix, names = match.groups()
        return [(Path(f"{prefix}{name.strip()}.json"), "all") for name in names.split(",") if name.strip()]
    path = Path(text)
    if path.suffix not in (".yaml", ".yml"):
        return [(path, "all")]
    import yaml  # lazy: only a YAML mixture needs it

    if not path.is_file():
        raise InputError("data mixture not found", path, "an existing .yaml mixture with a 'datasets:' list")
    try:
        mixture = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:  # a syntax error, or a tag such as !!python/object that safe_load refuses
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise InputError("not a plain YAML mixture", path, "plain YAML with a 'datasets:' list of {json_path, "
                         "sampling_strategy} (no !!python tags: the file is read with yaml.safe_load)",
                         hint=problem) from None
    except UnicodeDecodeError as e:
        raise InputError("not a text file", path, f"a UTF-8 YAML mixture ({e.reason})") from None
    entries = mixture.get("datasets") if isinstance(mixture, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError("no datasets", path, "a data mixture must hold a 'datasets:' list of "
                         "{json_path, sampling_strategy}")
    out = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("json_path"), str):
            raise InputError(f"entry {n} has no json_path", path, f"data mixture {path}: entry {n} has no "
                             f"json_path: {entry!r}")
        file = Path(entry["json_path"])
        file = file if file.is_absolute() else path.parent / file
        strategy = str(entry.get("sampling_strategy", "all"))
        try:
            parse_strategy(strategy, 0)  # fail early, naming the mixture
        except ValueError as e:
            raise InputError(f"entry {n}: bad sampling_strategy", path, str(e)) from None
        if not file.is_file():
            raise InputError("data file not found", f"{file}, entry {n} of the mixture {path}",
                             "an existing .json or .jsonl file (a relative json_path is relative to the mixture's "
                             "folder)")
        out.append((file, strategy))
    return out


def parse_strategy(strategy: str, n: int) -> tuple[str, int]:
    """(kind, count) of a sampling strategy applied to `n` records; a percentage rounds up.

    Raises:
        ValueError: for an unknown kind or a count that is not a non-negative number.

    Example:
        >>> parse_strategy("first:10%", 95), parse_strategy("random:7", 95), parse_strategy("all", 95)
        (('first', 10), ('random', 7), ('all', 95))
    """
    kind, _, number = strategy.strip().partition(":")
    if kind not in STRATEGIES or (kind == "all") != (number == ""):
        raise ValueError(f"sampling_strategy must be 'all' or one of first|end|random:N (N a count or a "
                         f"percentage like 10%), got {strategy!r}")
    if kind == "all":
        return kind, n
    try:
        value = float(number[:-1]) if number.endswith("%") else int(number)
    except ValueError:
        raise ValueError(f"sampling_strategy {strategy!r}: {number!r} is not a count or a percentage") from None
    if value < 0:
        raise ValueError(f"sampling_strategy {strategy!r}: the count must be >= 0")
    count = math.ceil(value * n / 100) if number.endswith("%") else int(value)
    return kind, min(count, n)


def sample_positions(n: int, strategy: str, seed: int) -> list[int]:
    """Positions, in file order, that a sampling strategy keeps out of `n` records.

    Example:
        >>> sample_positions(5, "first:2", 0), sample_positions(5, "end:40%", 0)
        ([0, 1], [3, 4])
    """
    kind, count = parse_strategy(strategy, n)
    if kind == "first":
        return list(range(count))
    if kind == "end":
        return list(range(n - count, n))
    if kind == "random":
        return sorted(random.Random(seed).sample(range(n), count))
    return list(range(n))


def read_records(path: str | Path) -> list[dict[str, Any] | Skipped]:
    """Read a JSON list or a JSONL file of records.

    A JSONL line that is not valid JSON becomes a `Skipped`; a JSON file that does not parse, or
    is not a list, is an error of the whole file.

    Raises:
        InputError: when `path` does not exist, or for a `.json` file that is not a JSON list.
    """
    return _parse_file(Path(path), _read_bytes(Path(path)))[0]


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise InputError("data file not found" if not path.exists() else "not a file", path,
                         "an existing .json or .jsonl file")
    return path.read_bytes()


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Switch the cyclic garbage collector off inside the block (for code that makes many containers)."""
    # Parsing a million records creates tens of millions of containers, none of them garbage; the
    # cyclic collector would walk them again and again (3x the parse time on a 300 MB file).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse_file(path: Path, data: bytes) -> tuple[list[Any], list[int]]:
    """(records, positions): JSON list index, or JSONL line number (blank lines skipped)."""
    if path.suffix == ".jsonl":
        out, lines = [], []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError("not a text file", path, "JSON lines in UTF-8, one record per line",
                             hint=str(e)) from None
        with no_cyclic_gc():
            for n, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    where = f"{path.name}:{n}"
                    out.append(Skipped(where, f"line {n} is not valid JSON ({e.msg})", where))
                lines.append(n)
        return out, lines
    try:
        with no_cyclic_gc():
            records = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError("not valid JSON", path, "a JSON list of records (or .jsonl, one record per line)",
                         hint=str(e)) from None
    if not isinstance(records, list):
        raise InputError("not a JSON list", path, f"a data file must hold a JSON list of records, got "
                         f"{type(records).__name__}; use .jsonl for one record per line")
    return records, range(len(records))


def load_rows(spec: str | Path, seed: int = 0) -> DataRows:
    """Read every file of a data spec (see `data_files`), applying each mixture entry's sampling.

    Raises:
        InputError: as `data_files` and `read_records`.
    """
    rows = DataRows()
    for file_no, (path, strategy) in enumerate(data_files(spec)):
        data = _read_bytes(path)
        records, positions = _parse_file(path, data)
        keep = sample_positions(len(records), strategy, seed)
        selected = hashlib.sha256(array("q", keep).tobytes()).hexdigest()[:16]
        rows.files.append(path.absolute())  # records' media fall back to its folder, whatever the cwd
        rows.fingerprints.append(f"{hashlib.sha256(data).hexdigest()}:{selected}")
        if len(keep) == len(records):  # all of them: no copy of a million-record list
            rows.raws.extend(records)
            rows.positions.extend(positions)
        else:
            rows.raws.extend(records[k] for k in keep)
            rows.positions.extend(positions[k] for k in keep)
        rows.file_ids.extend([file_no] * len(keep))
    return rows
