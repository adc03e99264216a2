"""Placeholder expansion and truncation around visual spans, with hand-computed expectations."""

from __future__ import annotations

import pytest

from vlm_vision.model.placeholders import IGNORE_INDEX, VisualSpanCut, expand_placeholders, span_length, truncate


def test_counts_and_spans_expand_in_order_and_their_labels_are_ignored():
    ids, labels = expand_placeholders([1, 9, 2, 8, 9], {9: iter([2, [9, 5, 9]]), 8: [3]}, labels=[1, -100, 2, 3, 4])
    assert ids == [1, 9, 9, 2, 8, 8, 8, 9, 5, 9]
    assert labels == [1, IGNORE_INDEX, IGNORE_INDEX, 2] + [IGNORE_INDEX] * 6
    assert expand_placeholders([9], {9: [1]}) == ([9], None)
    assert [span_length(3), span_length([4, 5])] == [3, 2]


def test_a_shared_iterator_serves_the_samples_in_turn():
    spans = {9: iter([2, 3])}
    assert [expand_placeholders(s, spans)[0] for s in ([9], [0, 9])] == [[9, 9], [0, 9, 9, 9]]


def test_truncation_cuts_text_on_either_side_and_never_a_visual_span():
    ids = [1, 2, 9, 9, 3, 4]
    assert ids[truncate(ids, 4, [9])] == [1, 2, 9, 9]
    assert ids[truncate(ids, 4, [9], side="left")] == [9, 9, 3, 4]
    assert ids[truncate(ids, 9, [9])] == ids
    with pytest.raises(VisualSpanCut, match=r"tokens 2\.\.3 of 6, max_length=3; keeping its 2 visual tokens "
                                             r"whole needs 4") as right:
        truncate(ids, 3, [9])
    with pytest.raises(VisualSpanCut) as left:
        truncate(ids, 3, [9], side="left")
    assert (right.value.needed, left.value.needed) == (4, 4)
