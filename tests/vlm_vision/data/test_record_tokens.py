"""A record's tokens (`vlm_vision.data.record_tokens`): placeholders expanded to their visual span,
the length cut in the text but never in a visual span, the scan's reasons for each record it drops,
and an image's size read from its header upright."""

from __future__ import annotations

import pytest

from tests.vlm_vision.data.records import llava_record as _record
from tests.vlm_vision.data.records import tokenizer_with_placeholders
from tests.vlm_vision.data.records import visual_spec as _visual
from tests.vlm_vision.train_fixtures import QUESTION
from vlm_vision.data.files import Skipped
from vlm_vision.data.formats import BadSample
from vlm_vision.data.record_tokens import expand_placeholder, fit_length, scan_records


@pytest.fixture(scope="module")
def tok():
    return tokenizer_with_placeholders()


def test_expand_placeholder_hand_computed():
    assert expand_placeholder([1, 9, 2], [-100, -100, 2], token_id=9, count=3) == (
        [1, 9, 9, 9, 2], [-100, -100, -100, -100, 2])
    with pytest.raises(ValueError, match="count"):
        expand_placeholder([1], [1], 9, 0)


def test_fit_length_cuts_text_but_never_a_visual_span():
    ids, labels = [1, 9, 9, 2, 3, 4], [-100, -100, -100, 2, 3, 4]
    assert fit_length(ids, labels, 4, (9,)) == ([1, 9, 9, 2], [-100, -100, -100, 2])
    with pytest.raises(BadSample, match=r"visual span would be truncated: tokens 1\.\.2 of 6, max_length=2"):
        fit_length(ids, labels, 2, (9,))
    with pytest.raises(BadSample, match="no assistant tokens"):
        fit_length([1, 2, 3], [-100, -100, 3], 2, ())


def test_scan_keeps_good_records_and_gives_reasons_for_the_rest(tmp_path, tok):
    (tmp_path / "a.mp4").write_bytes(b"x")
    long_question = QUESTION + " " + "word " * 200
    raws = [_record(id="good"), _record(id="gone", video="gone.mp4"), _record(id="empty", conversations=[]),
            _record(id="long", question=long_question), Skipped("f:3", "line 3 is not valid JSON")]
    for r, i in zip(raws, ["good", "gone", "empty", "long"]):
        r["id"] = i
    kept, skipped = scan_records(raws, tmp_path, tok, _visual(tok, per_frame=4, frames=3), max_length=64)
    assert [r.id for r in kept] == ["good"]
    reasons = {s.id: s.reason for s in skipped}
    assert set(reasons) == {"gone", "empty", "long", "f:3"}
    assert reasons["gone"].startswith("missing media") and reasons["empty"] == "empty conversation"
    # The visual span fits; the long question pushes the whole answer past max_length.
    assert reasons["long"] == "no assistant tokens within max_length=64"
    # A visual span that itself crosses max_length is refused, never cut.
    _, skipped = scan_records([_record()], tmp_path, tok, _visual(tok, per_frame=30, frames=3), max_length=64)
    assert skipped[0].reason.startswith("visual span would be truncated")


def test_image_size_from_the_header_is_upright_like_the_loaded_image(tmp_path):
    import numpy as np
    from PIL import Image

    from vlm_vision.model.anyres import anyres_pixel_values
    from vlm_vision.data.record_tokens import image_size
    from vlm_vision.data.formats import Record

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 50 wide x 20 high, shown turned a quarter: 20 wide x 50 high
    Image.fromarray(np.zeros((20, 50, 3), np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    record = Record("p", (), "image", tmp_path / "phone.jpg")
    assert image_size(record) == (50, 20)
    _, loaded = anyres_pixel_values(tmp_path / "phone.jpg", grid_pinpoints=[[336, 672], [672, 336]])
    assert loaded == (50, 20)  # the token count and the crops agree on the size
