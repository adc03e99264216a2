"""The scan: every record's token length and checks, computed once, cached beside the output, shared.

Rendering a chat template and tokenizing 1.3M conversations takes many minutes; doing it on every
process at every start (and again on resume) is what made large runs slow to begin. Here each
process scans a strided share of the records (`i % num_processes == process_index`), optionally
split further over worker processes, and the shares are gathered, so the first scan costs
1/num_processes of the work per process. The result (lengths, media kinds, skip reasons) is written
to `<cache_dir>/scan-<key>.npz`, where the key hashes everything the result depends on: each data
file's content and the records selected from it, the tokenizer's vocabulary and chat template, the
visual token counts, `max_length`, the media folders and this module's version. A later start with the
same key (a resume, another stage on the same data) reads the file instead of scanning; a changed data
file, tokenizer or setting gives another key, so a stale result is never used.

What the key does not cover: the media files themselves (stat-ing a million files is the slow scan
again). A file that disappears after the scan is still caught when it is loaded (a runtime skip);
one that appears after the scan stays skipped until the cache file is deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from video.atomic_files import write_atomic
from vlm_vision.data.chat_render import ChatRenderer
from vlm_vision.data.files import DataRows, Skipped, load_rows, no_cyclic_gc
from vlm_vision.data.formats import BadSample, MediaRoots, Record, parse_record
from vlm_vision.data.store import RecordStore, open_store
from vlm_vision.data.record_tokens import (VisualSpec, frame_times, image_size, prompt_messages, scan_one, tiled_image,
                                      visual_counts, visual_frames)

Rows = DataRows | RecordStore
"""Records with where they came from: read into memory (`DataRows`) or memory-mapped (`RecordStore`)."""

__all__ = ["KINDS", "LazyRecords", "Rows", "ScanResult", "TrainingData", "cached_scan", "load_training_data",
           "open_rows", "scan_key", "scan_rows"]

logger = logging.getLogger("vlm_vision.data.scan")

SCAN_VERSION = 2
KINDS = {None: 0, "image": 1, "video": 2}
"""Media kind codes in `ScanResult.kinds` (0 text, 1 image, 2 video)."""
_PROBE_FRAMES = (1, 2, 7, 32)
_PROBE_SIZES = ((336, 336), (480, 640), (1000, 300))


@dataclass
class ScanResult:
    """Per row of a `DataRows`: token length (0 when skipped), media kind code, and the skips.

    Attributes:
        lengths: int32[R] tokens of each row, visual tokens included, after fitting to max_length.
        kinds: int8[R] `KINDS` code of each row.
        skipped: the skipped rows, each with id, reason and source, in row order.
        skipped_rows: int64[S] row of each skipped entry.
        cached: bool[R] rows with a pre-extracted token file (the files the run's tower must have made).
    """

    lengths: np.ndarray
    kinds: np.ndarray
    skipped: list[Skipped]
    skipped_rows: np.ndarray
    cached: np.ndarray | None = None

    @property
    def kept(self) -> np.ndarray:
        """int64[K] rows that can be trained on, in row order."""
        keep = np.ones(len(self.lengths), dtype=bool)
        keep[self.skipped_rows] = False
        return np.flatnonzero(keep)


class LazyRecords(Sequence):
    """The kept rows as `Record`s, parsed when indexed (a million `Record`s up front cost seconds and memory)."""

    def __init__(self, rows: Rows, kept: np.ndarray, roots: MediaRoots):
        self.rows, self.kept, self.roots = rows, np.asarray(kept, dtype=np.int64), roots

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int) -> Record:
        return _parse_row(self.rows, int(self.kept[index]), self.roots)

    def source(self, index: int) -> str:
        """The data file and position of kept record `index`."""
        return self.rows.source(int(self.kept[index]))


def _parse_row(rows: Rows, k: int, roots: MediaRoots) -> Record:
    raw = rows.raw(k)
    if isinstance(raw, Skipped):
        raise BadSample(raw.id, raw.reason)
    return parse_record(raw, roots, rows.positions[k], rows.source(k), rows.data_dir(k))


def scan_rows(rows: Rows, indices: Sequence[int], roots: MediaRoots, tokenizer: Any, visual: VisualSpec,
              max_length: int, chunk: int = 512) -> dict[str, Any]:
    """Scan the given rows: {"rows", "lengths", "kinds", "cached", "skipped": [(row, id, reason, source)]}.

    Each conversation is rendered once (`ChatRenderer`: the compiled template, checked against
    transformers) and the texts are tokenized in batches (the tokenizer's own threads); a record whose length is not plainly within `max_length` with its placeholders
    all present takes the full path (`scan_one`), which finds the exact reason or length.
    """
    with no_cyclic_gc():  # a scan makes many containers and no garbage cycles
        return _scan_rows(rows, np.asarray(indices, dtype=np.int64), roots, tokenizer, visual, max_length, chunk)


def _scan_rows(rows: Rows, indices: np.ndarray, roots: MediaRoots, tokenizer: Any, visual: VisualSpec,
               max_length: int, chunk: int) -> dict[str, Any]:
    lengths = np.zeros(len(indices), dtype=np.int32)
    kinds = np.zeros(len(indices), dtype=np.int8)
    cached = np.zeros(len(indices), dtype=bool)
    skipped = []
    renderer = ChatRenderer(tokenizer)
    for start in range(0, len(indices), chunk):
        ready: list[tuple[int, Record, int, list[int]]] = []  # (position in output, record, id, counts)
        texts = []
        for out in range(start, min(start + chunk, len(indices))):
            k = int(indices[out])
            try:
                record = _parse_row(rows, k, roots)
                kind = record.media_kind
                frames = visual_frames(record, visual) if kind == "video" else 1
                size = image_size(record) if kind == "image" and tiled_image(record, visual) else None
                token_id, counts = visual_counts(record, visual, frames, size) if kind else (-1, [])
                times = frame_times(record, visual, frames) if kind == "video" else None
            except BadSample as e:
                skipped.append((k, e.sample_id, e.reason, rows.source(k)))
                continue
            ready.append((out, record, token_id, counts))
            texts.append(prompt_messages(record, visual, times) if times else list(record.messages))
        encoded = _token_ids(tokenizer, renderer.render(texts)) if texts else []
        for (out, record, token_id, counts), ids in zip(ready, encoded):
            length = len(ids) - len(counts) + sum(counts)
            kinds[out] = KINDS[record.media_kind]
            cached[out] = bool(record.cached_paths)
            if length <= max_length and (not counts or ids.count(token_id) == len(counts)):
                lengths[out] = length
                continue
            try:
                lengths[out] = scan_one(record, tokenizer, visual, max_length)
            except BadSample as e:
                k = int(indices[out])
                kinds[out], cached[out] = KINDS[None], False
                skipped.append((k, e.sample_id, e.reason, rows.source(k)))
    skipped.sort(key=lambda s: s[0])
    return {"rows": indices, "lengths": lengths, "kinds": kinds, "cached": cached, "skipped": skipped}


def _token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens: the backend's batch encoding without offsets when
    the tokenizer is a plain fast one (what `tokenizer(texts)` computes, minus the offsets it drops)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [e.ids for e in fast(texts, add_special_tokens=False)]


def scan_key(rows: Rows, roots: MediaRoots, tokenizer: Any, visual: VisualSpec, max_length: int) -> str:
    """A hash of everything a scan's result depends on (see the module docstring)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = {
        "version": SCAN_VERSION,
        "files": [[str(f.resolve()), fp] for f, fp in zip(rows.files, rows.fingerprints)],
        "tokenizer": hashlib.sha256(vocab.encode()).hexdigest(),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "token_ids": sorted(visual.token_ids.items()),
        "image_tokens": visual.image_tokens,
        "tokens_per_frame": visual.tokens_per_frame,
        "num_frames": visual.num_frames,
        "video_tokens": [_probe(visual.video_tokens, t) for t in (*_PROBE_FRAMES, visual.num_frames)],
        "time_instruction": visual.time_instruction,
        "anyres_tokens": ([_probe(visual.anyres_tokens, h, w) for h, w in _PROBE_SIZES]
                          if visual.anyres_tokens else None),
        "max_length": max_length,
        "roots": [str(Path(p).resolve()) if p else None for p in (roots.media_root, roots.image_folder,
                                                                  roots.video_folder)],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _probe(count: Callable[..., int], *args: int) -> int | str:
    """A token count for the key; a count the settings refuse (a token budget) is keyed by its message."""
    try:
        return count(*args)
    except ValueError as e:
        return f"refused: {e}"


_POOL_STATE: dict[str, Any] = {}


def _pool_scan(indices: np.ndarray) -> dict[str, Any]:
    s = _POOL_STATE
    return scan_rows(s["rows"], indices, s["roots"], s["tokenizer"], s["visual"], s["max_length"])


def _ignore_ctrl_c() -> None:
    """A scan worker leaves Ctrl-C to its parent, which stops the pool (no worker prints a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _scan_share(rows: Rows, mine: np.ndarray, roots: MediaRoots, tokenizer: Any, visual: VisualSpec,
                max_length: int, workers: int) -> list[dict[str, Any]]:
    if workers <= 1 or len(mine) < 2 * workers:
        return [scan_rows(rows, mine, roots, tokenizer, visual, max_length)]
    _POOL_STATE.update(rows=rows, roots=roots, tokenizer=tokenizer, visual=visual, max_length=max_length)
    try:  # forked workers share the rows and the tokenizer without pickling them
        with multiprocessing.get_context("fork").Pool(workers, _ignore_ctrl_c) as pool:
            return pool.map(_pool_scan, [mine[w::workers] for w in range(workers)])
    finally:
        _POOL_STATE.clear()


def _merge(parts: Sequence[dict[str, Any]], n: int) -> ScanResult:
    lengths, kinds, cached = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int8), np.zeros(n, dtype=bool)
    skipped = []
    for part in parts:
        lengths[part["rows"]] = part["lengths"]
        kinds[part["rows"]] = part["kinds"]
        cached[part["rows"]] = part["cached"]
        skipped += part["skipped"]
    skipped.sort(key=lambda s: s[0])
    return ScanResult(lengths, kinds, [Skipped(i, r, s) for _, i, r, s in skipped],
                      np.asarray([s[0] for s in skipped], dtype=np.int64), cached)


def _write(result: ScanResult, path: Path) -> None:
    """Save a scan result as one `.npz` file, atomically."""
    data = io.BytesIO()
    np.savez(data, lengths=result.lengths, kinds=result.kinds, skipped_rows=result.skipped_rows, cached=result.cached,
             skipped=np.asarray(json.dumps([[s.id, s.reason, s.source] for s in result.skipped])))
    write_atomic(path, data.getvalue())


def _read(path: Path, n: int) -> ScanResult | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            lengths, kinds, rows, cached = f["lengths"], f["kinds"], f["skipped_rows"], f["cached"]
            skipped = [Skipped(*s) for s in json.loads(str(f["skipped"]))]
    except (OSError, ValueError, KeyError) as e:
        logger.warning("scan cache %s is unreadable (%s); scanning again", path, e)
        return None
    if len(lengths) != n or len(skipped) != len(rows):
        logger.warning("scan cache %s holds %d rows for %d records; scanning again", path, len(lengths), n)
        return None
    return ScanResult(lengths, kinds, skipped, rows, cached)


def cached_scan(rows: Rows, roots: MediaRoots, tokenizer: Any, visual: VisualSpec, max_length: int, *,
                cache_dir: str | Path | None, process_index: int = 0, num_processes: int = 1,
                gather: Callable[[Any], list[Any]] | None = None, workers: int = 1) -> tuple[ScanResult, bool]:
    """Scan every row once across all processes, or read the result a previous scan cached.

    Args:
        cache_dir: folder of the cache files (None: no cache, always scan).
        process_index, num_processes: this process among those that share the scan.
        gather: `obj -> [obj of process 0, obj of process 1, ...]` (every process calls it, with the
            same sequence of calls); required when `num_processes > 1`.
        workers: forked worker processes that split this process's share.

    Returns:
        (result, True when it came from the cache).
    """
    if num_processes > 1 and gather is None:
        raise ValueError(f"num_processes={num_processes} needs a gather function to share the scan")
    gather = gather or (lambda obj: [obj])
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"scan-{scan_key(rows, roots, tokenizer, visual, max_length)}.npz"
    cached = _read(path, len(rows)) if path is not None and path.is_file() else None
    if all(gather(cached is not None)):  # every process must agree, or some would wait in the gather below
        return cached, True
    mine = np.arange(process_index, len(rows), num_processes)
    parts = _scan_share(rows, mine, roots, tokenizer, visual, max_length, workers)
    result = _merge([p for share in gather(parts) for p in share], len(rows))
    if path is not None and process_index == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(result, path)
    return result, False


@dataclass
class TrainingData:
    """What a training run needs from its data spec.

    Attributes:
        records: the trainable records, parsed when indexed.
        lengths, kinds: int32[K] tokens and int8[K] `KINDS` code of each of them (length grouping).
        skipped: the records left out, with reasons and sources.
        cache_hit: whether the scan was read from the cache.
        cached: bool[K] records with pre-extracted token files.
        rows: the records (memory-mapped `RecordStore` with a cache folder) the kept ones index into.
    """

    records: LazyRecords
    lengths: np.ndarray
    kinds: np.ndarray
    skipped: list[Skipped]
    cache_hit: bool
    cached: np.ndarray | None = None
    rows: Rows | None = None


def open_rows(spec: str | Path | Rows, *, seed: int = 0, cache_dir: str | Path | None = None,
              local_main: bool = True, barrier: Callable[[], Any] = lambda: None) -> Rows:
    """The records of a data spec: the memory-mapped store in `cache_dir` (the machine's main process
    builds it, the others wait at `barrier` and open it), or read into memory without a cache folder."""
    if not isinstance(spec, (str, Path)):
        return spec
    if cache_dir is None:
        return load_rows(spec, seed)
    store = open_store(spec, cache_dir, seed=seed) if local_main else None
    barrier()
    return store if store is not None else open_store(spec, cache_dir, seed=seed, build=False)


def load_training_data(spec: str | Path | Rows, roots: MediaRoots, tokenizer: Any, visual: VisualSpec,
                       max_length: int, *,
                       seed: int = 0, cache_dir: str | Path | None = None, process_index: int = 0,
                       num_processes: int = 1, gather: Callable[[Any], list[Any]] | None = None,
                       workers: int = 1, local_main: bool | None = None) -> TrainingData:
    """Read a data spec (file, pattern or mixture; or its rows, read already), scan it once (or read the
    cached scan), keep the good records.

    With a `cache_dir` the records go to the memory-mapped store there (`vlm_vision.data.store`),
    built by the machine's main process (`local_main`, default: process 0) while the others wait.

    Raises:
        FileNotFoundError, ValueError: for data files or mixtures that cannot be read.
    """
    if num_processes > 1 and gather is None:
        raise ValueError(f"num_processes={num_processes} needs a gather function to share the scan")
    local_main = process_index == 0 if local_main is None else local_main
    rows = open_rows(spec, seed=seed, cache_dir=cache_dir, local_main=local_main,
                     barrier=(lambda: gather(None)) if gather is not None else (lambda: None))
    result, hit = cached_scan(rows, roots, tokenizer, visual, max_length, cache_dir=cache_dir,
                              process_index=process_index, num_processes=num_processes, gather=gather,
                              workers=workers)
    kept = result.kept
    cached = result.cached[kept] if result.cached is not None else None
    return TrainingData(LazyRecords(rows, kept, roots), result.lengths[kept], result.kinds[kept], result.skipped, hit,
                        cached, rows)
