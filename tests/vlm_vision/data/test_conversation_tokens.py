"""A conversation's tokens (`vlm_vision.data.conversation_tokens`): labels on exactly the assistant
turns of the chat template's text (padding_id's tests are with its home, tests/vlm_vision/model/test_llm.py)."""

import pytest
from tokenizers import AddedToken

from tests.vlm_vision.train_fixtures import make_tokenizer
from vlm_vision.data.conversation_tokens import tokenize_conversation
from vlm_vision.model.placeholders import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    tok = make_tokenizer()
    tok.add_tokens([AddedToken("<video>", special=True), AddedToken("<image>", special=True)], special_tokens=True)
    return tok


def _decoded_labels(tok, ids, labels):
    return tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])


def test_labels_cover_exactly_the_assistant_turns(tok):
    messages = [{"role": "user", "content": "<video>\nWhat colour is this video?"},
                {"role": "assistant", "content": "red"},
                {"role": "user", "content": "Sure?"},
                {"role": "assistant", "content": "The video is mostly red."}]
    ids, labels = tokenize_conversation(tok, messages)
    assert ids == tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert _decoded_labels(tok, ids, labels) == "red<|im_end|>\nThe video is mostly red.<|im_end|>\n"
    # Every labelled token is the id itself; everything else (user turns, role headers) is -100.
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    assert labels[: ids.index(tok.convert_tokens_to_ids("<video>")) + 1] == [IGNORE_INDEX] * (
        ids.index(tok.convert_tokens_to_ids("<video>")) + 1)


def test_labels_with_a_system_turn(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "blue"}]
    ids, labels = tokenize_conversation(tok, messages)
    assert _decoded_labels(tok, ids, labels) == "blue<|im_end|>\n"
