"""The run's record in its output folder: `log.jsonl`, `skipped.jsonl` and the `loss.png` plot."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from video.atomic_files import write_atomic
from vlm_vision.data.files import Skipped
from vlm_vision.data.formats import record_origin

__all__ = ["RunLog", "plot_loss"]

logger = logging.getLogger("vlm_vision.train")
_WARN_AT_MOST = 20  # a million-record scan may skip thousands: the rest go to skipped.jsonl only


class RunLog:
    """`log.jsonl` (one line per optimizer step and per evaluation) and `skipped.jsonl`."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.path = output_dir / "log.jsonl"
        self.skipped_path = output_dir / "skipped.jsonl"
        self.enabled = enabled

    def write(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def skipped(self, items: Sequence[Skipped], where: str) -> None:
        for s in items[:_WARN_AT_MOST]:
            logger.warning("skipped sample %s from %s (%s): %s", s.id, s.source or "?", where, s.reason)
        if len(items) > _WARN_AT_MOST:
            logger.warning("... and %d more skipped samples (%s); all are in %s", len(items) - _WARN_AT_MOST, where,
                           self.skipped_path)
        with self.skipped_path.open("a") as f:  # every process appends its own runtime skips
            for s in items:
                f.write(json.dumps({**record_origin(s), "reason": s.reason, "where": where}) + "\n")

    def skips_until(self, step: int) -> list[Skipped]:
        """The samples skipped during training at steps 1..`step`, as `skipped.jsonl` holds them.

        A resumed run counts them again towards its skip ceiling, so that stopping and resuming
        never resets the count. (Skips of later steps are left out: the resumed run replays them.)
        """
        if not self.skipped_path.exists():
            return []
        found = []
        for line in self.skipped_path.read_text().splitlines():
            entry = json.loads(line) if line.strip() else {}
            kind, _, number = entry.get("where", "").partition(" ")
            if kind == "step" and number.isdigit() and int(number) <= step:
                found.append(Skipped(entry["id"], entry["reason"], entry.get("source", "")))
        return found

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, step: int) -> None:
        """Drop lines after `step` (a resumed run rewrites them), atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = [e for e in self.entries() if e["step"] <= step]
        write_atomic(self.path, "".join(json.dumps(e) + "\n" for e in kept).encode())


def plot_loss(entries: Sequence[dict[str, Any]], path: Path) -> Path:
    """Draw training (and evaluation) loss against step into `path` (matplotlib, Agg backend)."""
    import matplotlib  # lazy: only the loss chart needs it, at the end of a run

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend

    train = [(e["step"], e["loss"]) for e in entries if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in entries if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
