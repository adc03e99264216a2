"""The base LLM's helpers: padding_id (the pad token, else the end-of-sequence token, else a clear error) and
takes_logits_to_keep (read off the forward's signature)."""

from types import SimpleNamespace

import pytest
from torch import nn

from vlm_vision.model.llm import padding_id, takes_logits_to_keep


def test_pad_token_first_then_eos():
    assert padding_id(SimpleNamespace(pad_token_id=7, eos_token_id=2)) == 7
    assert padding_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # id 0 is a real id, not "missing"
    assert padding_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2


def test_neither_is_an_error():
    with pytest.raises(ValueError, match="neither a pad nor an eos token"):
        padding_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))


def test_llms_without_logits_to_keep_get_the_plain_call():
    class Plain(nn.Module):
        def forward(self, inputs_embeds=None, attention_mask=None, labels=None):
            return None

    assert not takes_logits_to_keep(Plain())
