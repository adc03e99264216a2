"""The compiled chat template (`vlm_vision.data.chat_render.ChatRenderer`) renders transformers' text:
checked in full on the first batch and a few texts of every later one; at the first difference
every text comes from `apply_chat_template` instead."""

from __future__ import annotations

import pytest

from tests.vlm_vision.train_fixtures import make_tokenizer
from vlm_vision.data.chat_render import ChatRenderer

CONVERSATIONS = [
    [{"role": "user", "content": f"What colour is video {k}?"}, {"role": "assistant", "content": "red"}]
    for k in range(8)
]


@pytest.fixture
def tokenizer():
    """The tests' ChatML tokenizer, counting what transformers renders (and changing it when told)."""
    tok = make_tokenizer()
    real = tok.apply_chat_template
    tok.rendered, tok.suffix = 0, ""

    def counted(messages, **kwargs):
        tok.rendered += 1
        return real(messages, **kwargs) + tok.suffix

    tok.apply_chat_template = counted
    return tok


def test_texts_are_transformers_and_later_batches_are_checked_in_part(tokenizer):
    renderer = ChatRenderer(tokenizer)
    assert renderer.direct
    expected = [tokenizer.apply_chat_template(m, tokenize=False) for m in CONVERSATIONS]
    tokenizer.rendered = 0
    assert renderer.render(CONVERSATIONS) == expected
    assert tokenizer.rendered == 8  # the first batch: every text compared
    assert renderer.render(CONVERSATIONS) == expected
    assert tokenizer.rendered == 8 + 4  # later: every second text of 8 (4 checks a batch)
    assert renderer.direct


def test_a_difference_hands_every_text_to_transformers_from_then_on(tokenizer):
    renderer = ChatRenderer(tokenizer)
    renderer.render(CONVERSATIONS[:2])
    tokenizer.suffix = "<changed>"  # transformers now renders something the compiled template does not
    texts = renderer.render(CONVERSATIONS)
    assert not renderer.direct
    assert all(text.endswith("<changed>") for text in texts) and len(texts) == 8


def test_a_tokenizer_without_a_template_string_renders_through_transformers(tokenizer):
    tokenizer.chat_template = None
    assert not ChatRenderer(tokenizer).direct
