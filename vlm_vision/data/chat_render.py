"""Rendering a chat template a million times: the template compiled once, checked against transformers.

`tokenizer.apply_chat_template` normalises and deep-copies every message before rendering (about
two thirds of its time on short conversations of plain strings). The scan renders plain
`{"role", "content": str}` messages only, so `ChatRenderer` renders the compiled template directly,
with the variables transformers passes (the tokenizer's special tokens, `add_generation_prompt`
False). It is kept only while it agrees: it checks every text of its first batch, then a few of
every later batch, against `apply_chat_template`, and at the first difference (or error) it
renders with `apply_chat_template` from then on. So the text is always transformers' text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

__all__ = ["ChatRenderer"]

logger = logging.getLogger("vlm_vision.data.chat_render")
_CHECK_LATER = 4  # texts of every later batch compared with transformers


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise ValueError(message)


def _compile(template: str) -> Callable[..., str] | None:
    """The template compiled as transformers compiles it (sandboxed, trimmed blocks), or None."""
    try:
        import jinja2  # lazy: only a scan renders
        from jinja2.sandbox import ImmutableSandboxedEnvironment  # lazy: as above

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        return env.from_string(template).render
    except Exception:  # noqa: BLE001 (any template this cannot compile is rendered by transformers)
        return None


class ChatRenderer:
    """`render(conversations)`: each conversation's text, as `tokenizer.apply_chat_template(m, tokenize=False)`."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        template = getattr(tokenizer, "chat_template", None)
        self._render = _compile(template) if isinstance(template, str) else None
        self._variables = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        self._checked = 0

    @property
    def direct(self) -> bool:
        """True while the compiled template is used."""
        return self._render is not None

    def _slow(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def render(self, conversations: Sequence[list[dict]]) -> list[str]:
        """The texts of `conversations` (lists of `{"role", "content": str}` messages)."""
        if self._render is None:
            return [self._slow(m) for m in conversations]
        try:
            texts = [self._render(messages=m, add_generation_prompt=False, tools=None, documents=None,
                                  **self._variables) for m in conversations]
        except Exception:  # noqa: BLE001 (the template raised: transformers renders, and says why)
            texts = None
        check = range(len(conversations)) if not self._checked else range(0, len(conversations),
                                                                            max(1, len(conversations) // _CHECK_LATER))
        if texts is None or any(texts[k] != self._slow(conversations[k]) for k in check):
            logger.info("the compiled chat template differs from apply_chat_template; rendering with the latter")
            self._render = None
            return [self._slow(m) for m in conversations]
        self._checked += len(check)
        return texts
