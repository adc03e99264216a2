"""Public names that load on first use (PEP 562), for a package's `__init__.py`.

`import video` and `import vlm_vision` stay light (no torch, no transformers): a public name is
imported from the module that defines it the first time it is looked up, then kept on the package.
Both packages use this one helper; it lives in the lower layer.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public names are `exports` (name -> module).

    Example:
        __getattr__, __dir__ = lazy_exports(__name__, {"load_video": "video.decode"})
    """

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return getattr_, dir_
