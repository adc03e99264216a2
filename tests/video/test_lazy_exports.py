"""Public names loaded on first use (`video.lazy_exports`), on a package made here whose names live in
standard-library modules."""

from __future__ import annotations

import sys
import types

import pytest

from video.lazy_exports import lazy_exports


@pytest.fixture
def package():
    module = types.ModuleType("lazy_demo")
    module.__getattr__, module.__dir__ = lazy_exports("lazy_demo", {"sqrt": "math", "dedent": "textwrap"})
    sys.modules["lazy_demo"] = module
    yield module
    del sys.modules["lazy_demo"]


def test_a_name_is_imported_from_its_module_then_kept_on_the_package(package):
    import math

    assert "sqrt" not in vars(package)
    assert package.sqrt is math.sqrt
    assert vars(package)["sqrt"] is math.sqrt  # later look-ups find it without __getattr__


def test_an_unknown_name_is_an_attribute_error_naming_the_package(package):
    with pytest.raises(AttributeError, match="module 'lazy_demo' has no attribute 'cbrt'"):
        package.cbrt


def test_dir_lists_the_public_names_before_they_load(package):
    names = dir(package)
    assert {"sqrt", "dedent"} <= set(names) and names == sorted(names)
