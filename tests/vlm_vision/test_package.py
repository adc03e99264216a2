"""The package's public API: every exported name resolves, on first use, to the object its module
defines; `import vlm_vision` and `vlm-vision --help` import neither torch nor transformers."""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys
import types

import pytest

import vlm_vision


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_import_and_help_stay_light():
    heavy = run_python("import sys, vlm_vision\n"
                       "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert heavy == "[]"
    code = ("import sys, contextlib, io\n"
            "from vlm_vision.commands.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as f: main(['--help'])\n"
            "print('torch' in sys.modules, 'extract' in f.getvalue())")
    assert run_python(code) == "False True"


@pytest.mark.parametrize("name", vlm_vision.__all__)
def test_every_public_name_is_its_module_object(name):
    value = getattr(vlm_vision, name)
    module = importlib.import_module(vlm_vision._EXPORTS[name])
    assert value is getattr(module, name)
    assert not isinstance(value, types.ModuleType)


def test_functions_named_like_their_modules_stay_functions():
    # Importing a submodule sets it as an attribute of the package; no submodule is named like a
    # public function (the loss lives in vlm_vision.model.contrastive, the loop in vlm_vision.training.loop), so
    # the functions stay functions in a fresh interpreter where nothing was resolved yet.
    code = ("import vlm_vision.commands.train, vlm_vision.training.clip, vlm_vision.model.contrastive, vlm_vision.training.loop\n"
            "import vlm_vision\n"
            "from vlm_vision import train, clip_loss\n"
            "print(type(train).__name__, type(clip_loss).__name__, type(vlm_vision.train).__name__)")
    assert run_python(code) == "function function function"


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'CLIPVisionTowr'"):
        vlm_vision.CLIPVisionTowr  # noqa: B018
    with pytest.raises(ImportError):
        exec("from vlm_vision import CLIPVisionTowr", {})
    assert set(vlm_vision.__all__) <= set(dir(vlm_vision))


@pytest.mark.parametrize("package", ["vlm_vision", "projector", "video"])
def test_no_module_is_named_like_a_public_name(package):
    # A submodule named like a public function would replace it on the package once imported.
    root = importlib.import_module(package)
    modules = {path.stem for path in pathlib.Path(root.__file__).parent.glob("*.py")}
    assert not modules & set(root.__all__), f"{package}: modules named like public names: {modules & set(root.__all__)}"
