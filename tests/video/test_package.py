"""The video package's public API: every exported name resolves, on first use, to the object its
module defines; `import video` and its light modules (atomic files, the decoder's) load no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

import video


def loaded_heavy(code: str) -> str:
    code += "\nimport sys; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("code", ["import video", "from video.atomic_files import write_atomic",
                                  "import video.decoder_process, video.sampling"])
def test_light_imports_load_no_torch(code):
    assert loaded_heavy(code) == "[]"


def test_a_public_name_loads_its_module():
    assert loaded_heavy("from video import spatial_pool") == "['torch']"


@pytest.mark.parametrize("name", video.__all__)
def test_every_public_name_is_its_module_object(name):
    value = getattr(video, name)
    assert value is getattr(importlib.import_module(video._EXPORTS[name]), name)
    assert not isinstance(value, types.ModuleType)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'load_vidoe'"):
        video.load_vidoe  # noqa: B018
    assert set(video.__all__) <= set(dir(video))
