"""A Griffe extension for the API reference (mkdocs.yml): our docstrings head their doctest section
`Example:`, as the Google style guide does; Griffe reads only `Examples:` as code, so this renames the
heading before the docstring is parsed (otherwise `>>>` lines render as nested quotes)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", flags=re.M)


class ExampleSection(griffe.Extension):
    """Rename `Example:` section headings to `Examples:` in every docstring Griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
