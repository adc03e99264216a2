"""What `vlm-vision extract` reports: one manifest line per video and run, and the final summary."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "Outcome", "append_line", "manifest_path", "merge_rank_manifests", "plural", "print_summary",
           "record"]

MANIFEST = "manifest.jsonl"


@dataclasses.dataclass
class Outcome:
    """What became of one video."""

    video: Path
    output: Path
    status: str
    """"ok", "partial" (written from a truncated file, --allow-partial), "skipped-existing" or "error"."""
    reason: str | None = None
    """Why it failed ("Type: message"), or why an existing output was extracted again."""
    shape: tuple[int, ...] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """More for the manifest: the source's identity, frame counts of a partial file, OOM retries."""


def manifest_path(out: Path, process_index: int, num_processes: int) -> Path:
    return out / (MANIFEST if num_processes == 1 else f"manifest.rank{process_index}.jsonl")


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; opened and closed per line so a merge never races an open handle."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def merge_rank_manifests(out: Path) -> None:
    """Move the lines of every manifest.rank<i>.jsonl into manifest.jsonl (main process only)."""
    for part in sorted(out.glob("manifest.rank*.jsonl")):
        text = part.read_text(encoding="utf-8")
        if text:
            with open(out / MANIFEST, "a", encoding="utf-8") as f:
                f.write(text if text.endswith("\n") else text + "\n")
                f.flush()
                os.fsync(f.fileno())
        part.unlink()


def record(outcome: Outcome) -> dict[str, Any]:
    """The manifest line of one outcome (without the run's common fields)."""
    record: dict[str, Any] = {"video": str(outcome.video), "output": outcome.output.name, "status": outcome.status}
    if outcome.reason is not None:
        record["reason"] = outcome.reason
    if outcome.shape is not None:
        record["tokens_shape"] = list(outcome.shape)
    record.update(outcome.extra)
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


def plural(n: int, word: str) -> str:
    """'1 video', '3 videos'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def print_summary(outcomes: list[Outcome], out: Path, rank: int, world: int, tag: str, seconds: float,
                  loop_seconds: float, frames: int) -> None:
    """Per video its tokens (or why it failed), then the counts and the speed, on stdout."""
    prefix = f"[process {rank}/{world}] " if world > 1 else ""
    done = [o for o in outcomes if o.status in ("ok", "partial")]
    skipped = [o for o in outcomes if o.status == "skipped-existing"]
    errors = [o for o in outcomes if o.status == "error"]
    for o in done + skipped:
        note = {"ok": "", "partial": " (PARTIAL: the file is truncated)", "skipped-existing": " (already done)"}
        again = f" ({o.reason})" if o.reason else ""
        print(f"{prefix}{o.video.name}: tokens {o.shape}{note[o.status]} -> {o.output.name}{again}")
    rate = max(loop_seconds, 1e-9)
    partial = sum(o.status == "partial" for o in outcomes)
    print(f"{prefix}{len(done)} extracted" + (f" ({partial} partial)" if partial else "")
          + f", {len(skipped)} already done, {len(errors)} failed in {seconds:.1f} s "
          f"({len(done) / rate:.2f} videos/s, {frames / rate:.1f} frames/s after loading the tower){tag}; "
          f"outputs in {out}")
    if errors:
        print(f"{prefix}failed videos (see {out / MANIFEST}):")
        for o in errors:
            print(f"{prefix}  {o.video}: {o.reason}")
