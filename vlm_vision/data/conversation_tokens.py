"""A conversation -> token ids and labels: the chat template rendered once, labels on assistant turns.

Why labels come from character spans: the conversation is rendered once with the tokenizer's own
chat template and tokenized once, so the ids are exactly those the model sees at inference. Each
assistant turn's span is found by rendering the conversation up to that turn (with the generation
prompt) and up to its end; tokens that start inside such a span carry labels, every other token is
-100. The span includes the template's end-of-turn marker, so the model learns to stop.

Shapes: L sequence length (lists of ids, before batching).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlm_vision.model.placeholders import IGNORE_INDEX

__all__ = ["assistant_char_spans", "check_tokenizer", "tokenize_conversation"]


def check_tokenizer(tokenizer: Any) -> None:
    """Fail early when a tokenizer cannot produce labels the way `tokenize_conversation` needs.

    Raises:
        ValueError: without a chat template, or when it is not a fast tokenizer (no offsets).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template "
                         f"(a Jinja template) before training")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; labels need "
                         f"offset mappings (load it with use_fast=True)")


def assistant_char_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` with the chat template and find each assistant turn's character span.

    Returns:
        (text, spans): the rendered conversation and `[start, end)` character spans, one per
        assistant turn, from after its generation prompt to the end of its turn markers.

    Raises:
        ValueError: when the template does not render a conversation's beginning as a prefix of
            the whole (labels cannot be placed then).
    """
    messages = list(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(before) and text.startswith(upto) and len(before) <= len(upto)):
            raise ValueError(f"the chat template does not render turns 0..{i} as a prefix of the whole "
                             f"conversation; cannot place assistant labels (before={before[-40:]!r}, "
                             f"upto={upto[-40:]!r})")
        spans.append((len(before), len(upto)))
    return text, spans


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and labels that are -100 everywhere but assistant turns.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        messages: chat-template messages.

    Returns:
        (input_ids, labels), both of length L; `labels[j] == input_ids[j]` on assistant tokens.

    Example:
        >>> ids, labels = tokenize_conversation(tok, [{"role": "user", "content": "hi"},
        ...                                           {"role": "assistant", "content": "red"}])
    """
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    k = 0  # token starts only grow and the spans are in order: one pass over both
    for j, (start, _end) in enumerate(enc["offset_mapping"]):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= start:
            labels[j] = ids[j]
    return ids, labels
