"""The skip ceiling: distinct skipped samples against max_skip_fraction, with the top reasons."""

from __future__ import annotations

import pytest

from vlm_vision.data.files import Skipped
from vlm_vision.training.config import TrainConfig
from vlm_vision.training.skips import SkipCeiling, TooManySkipped


def test_the_ceiling_counts_each_sample_once_and_names_the_top_reasons():
    ceiling = SkipCeiling(40, 0.05, "train.jsonl")  # 2 skips allowed
    bad = Skipped("a", "media could not be decoded: cannot decode video 'a.mp4': truncated", "#1")
    ceiling.add([bad, bad], "step 1")
    ceiling.add([bad, Skipped("b", "missing media: b.mp4", "#2")], "step 2")  # a again: still 2
    assert len(ceiling.reasons) == 2
    with pytest.raises(TooManySkipped) as info:
        ceiling.add([Skipped("c", "media could not be decoded: cannot decode video 'c.mp4'", "#3")], "step 3")
    assert str(info.value).startswith(
        "3 of 40 samples of train.jsonl (8%) were skipped by step 3, more than max_skip_fraction=0.05 allows. "
        "Top reasons: media could not be decoded (2); missing media (1).")


def test_a_fraction_of_one_never_stops_and_zero_stops_at_the_first():
    lenient = SkipCeiling(2, 1.0, "d")
    lenient.add([Skipped("a", "x", "#0"), Skipped("b", "y", "#1")], "scan")
    with pytest.raises(TooManySkipped):
        SkipCeiling(1000, 0.0, "d").add([Skipped("a", "x", "#0")], "scan")


def test_max_skip_fraction_is_checked():
    with pytest.raises(ValueError, match=r"max_skip_fraction must be in \[0, 1\], got 1.5"):
        TrainConfig(llm="l", tower="t", data="d", output_dir="o", max_skip_fraction=1.5)
    assert TrainConfig(llm="l", tower="t", data="d", output_dir="o").max_skip_fraction == 0.05
