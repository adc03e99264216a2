"""Placeholder expansion and truncation around visual spans, for inference and training alike.

`<image>` and `<video>` are single special tokens, so a tokenized prompt holds one id per medium.
The LLM sees one position per visual token, so each of those ids is replaced, after tokenizing, by
its span: the placeholder repeated once per visual token, or (a video with time markers) the exact
ids of its placeholders and markers. `VisionLanguageProcessor` (prompts) and the training data
(`vlm_vision.data.record_tokens`) both expand with `expand_placeholders` and both cut sequences with
`truncate`, which removes text only: a cut inside a visual span would leave more features than
placeholders, so it raises `VisualSpanCut` with the numbers instead, and each caller says what to do.

Shapes: L sequence length (a list of ids, before batching).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Union

__all__ = ["IGNORE_INDEX", "Span", "VisualSpanCut", "expand_placeholders", "span_length", "truncate"]

IGNORE_INDEX = -100
"""The label of a position the loss skips (visual tokens, prompt text, padding)."""

Span = Union[int, Sequence[int]]
"""What one placeholder becomes: a count of copies of itself, or the exact ids to put there."""


def span_length(span: Span) -> int:
    """Positions a span takes in the expanded sequence."""
    return len(span) if isinstance(span, Sequence) else span


def expand_placeholders(ids: Sequence[int], spans: Mapping[int, Iterable[Span]],
                        labels: Sequence[int] | None = None) -> tuple[list[int], list[int] | None]:
    """Replace each placeholder in `ids` by the next span given for its id, in order.

    Args:
        ids: token ids, one placeholder id per medium.
        spans: placeholder id -> its spans, one per occurrence in `ids` (an iterator may be shared
            across calls, so one batch-wide sequence serves every sample in turn).
        labels: per-token labels, or None; expanded positions get `IGNORE_INDEX`.

    Returns:
        (ids, labels) expanded; labels None when none were given.

    Example:
        >>> expand_placeholders([1, 9, 2], {9: [3]}, labels=[-100, -100, 2])
        ([1, 9, 9, 9, 2], [-100, -100, -100, -100, 2])
    """
    pending: dict[int, Iterator[Span]] = {token: iter(runs) for token, runs in spans.items()}
    out_ids: list[int] = []
    out_labels: list[int] | None = None if labels is None else []
    for j, token in enumerate(ids):
        if token in pending:
            span = next(pending[token])
            run = list(span) if isinstance(span, Sequence) else [token] * span
            out_ids += run
            if out_labels is not None:
                out_labels += [IGNORE_INDEX] * len(run)
        else:
            out_ids.append(token)
            if out_labels is not None:
                out_labels.append(labels[j])
    return out_ids, out_labels


class VisualSpanCut(ValueError):
    """Truncating to `max_length` would cut a visual span; the numbers a caller's message needs.

    Attributes:
        first, last: positions of the first and last visual token.
        visual: how many visual tokens the sequence holds.
        length: the sequence's length.
        max_length: the limit asked for.
        needed: the shortest length that keeps every visual token on the truncation side asked for.
    """

    def __init__(self, first: int, last: int, visual: int, length: int, max_length: int, side: str):
        self.first, self.last, self.visual, self.length, self.max_length = first, last, visual, length, max_length
        self.needed = length - first if side == "left" else last + 1
        super().__init__(f"visual span would be truncated: tokens {first}..{last} of {length}, "
                         f"max_length={max_length}; keeping its {visual} visual tokens whole needs {self.needed}")


def truncate(ids: Sequence[int], max_length: int, visual_ids: Iterable[int], *, side: str = "right") -> slice:
    """The part of a sequence that truncation to `max_length` keeps, cutting text only.

    Args:
        ids: the expanded sequence.
        max_length: the longest allowed sequence.
        visual_ids: the placeholder ids (visual positions).
        side: "right" keeps the start, "left" keeps the end (the tokenizer's `truncation_side`).

    Returns:
        A slice of `ids` (all of it when it fits).

    Raises:
        VisualSpanCut: when the kept part would not hold every visual token.
    """
    if len(ids) <= max_length:
        return slice(0, len(ids))
    visual_set = set(visual_ids)
    visual = [j for j, token in enumerate(ids) if token in visual_set]
    if visual:
        cut = VisualSpanCut(visual[0], visual[-1], len(visual), len(ids), max_length, side)
        if cut.needed > max_length:
            raise cut
    return slice(len(ids) - max_length, len(ids)) if side == "left" else slice(0, max_length)
