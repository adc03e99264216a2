"""padding_id: the pad token, else the end-of-sequence token, else a clear error."""

from types import SimpleNamespace

import pytest

from vlm_vision.data.conversation_tokens import padding_id


def test_pad_token_first_then_eos():
    assert padding_id(SimpleNamespace(pad_token_id=7, eos_token_id=2)) == 7
    assert padding_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # id 0 is a real id, not "missing"
    assert padding_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2


def test_neither_is_an_error():
    with pytest.raises(ValueError, match="neither a pad nor an eos token"):
        padding_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))
