"""The skip ceiling: a run that skips more than a set fraction of its samples stops with an error.

A bad sample is replaced and the run goes on (`vlm_vision.training.order`), which is right for the
odd broken file and wrong for a dataset that is mostly broken: such a run would report success on
a fraction of its data. `SkipCeiling` counts the distinct samples skipped so far, at the scan and
during training (every process's, gathered each micro-batch), and raises `TooManySkipped` once
they are more than `max_skip_fraction` of the dataset, listing the most common reasons.

Only data errors are skips: an undecodable video, a missing file, an unreadable image, a visual
span that cannot fit. Anything else (a TypeError in our code) propagates and stops the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vlm_vision.data.files import Skipped

__all__ = ["SkipCeiling", "TooManySkipped"]

TOP_REASONS = 5


class TooManySkipped(RuntimeError):
    """More samples were skipped than `max_skip_fraction` of the dataset allows."""


class SkipCeiling:
    """Counts distinct skipped samples and raises past `fraction` of `num_samples`.

    Args:
        num_samples: records in the data file (those the scan dropped included).
        fraction: the most that may be skipped, e.g. 0.05; 1.0 never stops.
        what: the data, named in the error (e.g. its path).
        listed_in: the file that lists every skip and its reason, named in the error (None: none does).
    """

    def __init__(self, num_samples: int, fraction: float, what: str, listed_in: str | None = "skipped.jsonl"):
        self.num_samples, self.fraction, self.what, self.listed_in = num_samples, fraction, what, listed_in
        self.reasons: dict[tuple[str, str], str] = {}  # (source, id) -> reason

    @property
    def limit(self) -> float:
        """Skipped samples allowed."""
        return self.fraction * self.num_samples

    def add(self, skipped: Iterable[Skipped], where: str) -> None:
        """Count `skipped` (once per sample); raise when the count passes the ceiling.

        Raises:
            TooManySkipped: with the count, the fraction and the top reasons.
        """
        for s in skipped:
            self.reasons.setdefault((s.source, s.id), s.reason)
        if len(self.reasons) > self.limit:
            raise TooManySkipped(self.message(where))

    def message(self, where: str) -> str:
        """The error: how many of how many, the ceiling, and the most common reasons with counts."""
        n = len(self.reasons)
        kinds = Counter(reason.split(":")[0] for reason in self.reasons.values())
        top = "; ".join(f"{kind} ({count})" for kind, count in kinds.most_common(TOP_REASONS))
        return (f"{n} of {self.num_samples} samples of {self.what} ({n / max(self.num_samples, 1):.0%}) were skipped "
                f"by {where}, more than max_skip_fraction={self.fraction:g} allows. Top reasons: {top}. "
                + (f"Every skip and its reason is in {self.listed_in}. " if self.listed_in else "")
                + "Fix the data, or raise max_skip_fraction (--max-skip-fraction) to train on the rest")
