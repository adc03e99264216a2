"""Without decord (Linux on ARM, macOS on Apple silicon: decord has no wheels there) the package works,
and the decord backend alone says, in one clear error, how to get it.

decord is hidden the way a machine without it looks to Python: a `sitecustomize` on PYTHONPATH puts
None in `sys.modules["decord"]`, so `import decord` raises ModuleNotFoundError and
`importlib.util.find_spec("decord")` finds nothing, in the test's subprocess and in every process
it starts (the decoder process, the extract command's decoding workers).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from video import load_video_tokens

REPO = pathlib.Path(__file__).resolve().parents[2]
VIDEO = REPO / "tests" / "data" / "realshort.mp4"
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
            patch_size=7)
BLOCKER = 'import sys\nsys.modules["decord"] = None  # as if decord were not installed\n'


@pytest.fixture(scope="module")
def no_decord(tmp_path_factory) -> dict[str, str]:
    """The environment of a Python without decord: a sitecustomize hiding it, then this worktree."""
    folder = tmp_path_factory.mktemp("no_decord")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def python(code: str, env: dict[str, str]) -> str:
    """Run `code` in a fresh interpreter with `env`; its stdout (fails the test, with stderr, on error)."""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def vlm_vision(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlm_vision.commands.main", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_decord_is_really_hidden(no_decord):
    code = ("import importlib.util\ntry:\n    import decord\nexcept ModuleNotFoundError:\n    print('missing', "
            "importlib.util.find_spec('decord'))")
    assert python(code, no_decord) == "missing None"


def test_imports_and_help_work(no_decord):
    code = ("import contextlib, io, vlm_vision, video, projector, video.decoder_process\n"
            "from vlm_vision.commands.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as f: main(['--help'])\n"
            "print('extract' in f.getvalue())")
    assert python(code, no_decord) == "True"


def test_default_backend_decodes_and_decord_backend_says_how_to_get_it(no_decord):
    code = (f"from video import load_video, DecordNotInstalled\n"
            f"clip = load_video({str(VIDEO)!r}, num_frames=8)\n"
            f"print(tuple(clip.frames.shape), clip.indices, clip.backend)\n"
            f"try:\n"
            f"    load_video({str(VIDEO)!r}, num_frames=8, backend='decord')\n"
            f"except DecordNotInstalled as error:\n"
            f"    print(isinstance(error, ImportError), error.name)\n"
            f"    print(error)\n")
    shape, kind, message = python(code, no_decord).splitlines()
    assert shape == "(8, 240, 320, 3) [0, 5, 10, 15, 20, 25, 30, 35] exact"
    assert kind == "True decord"
    assert "decord backend needs the decord package, which is not installed" in message
    assert "pip install 'vlm-vision[decord]'" in message and "'exact'" in message


def test_decord_missing_in_the_decoder_process_alone_is_the_same_error(no_decord):
    """decord importable where load_video runs but not in its decoder process (a broken install):
    the decoder's import error comes back as DecordNotInstalled, not as a bad video file."""
    blocker_dir = no_decord["PYTHONPATH"].split(os.pathsep)[0]
    plain = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = (f"import os\n"
            f"from video import load_video, DecordNotInstalled, VideoDecodeError\n"
            f"import decord  # here, it is installed\n"
            f"os.environ['PYTHONPATH'] = {blocker_dir!r} + os.pathsep + os.environ['PYTHONPATH']  # the decoder's\n"
            f"try:\n"
            f"    load_video({str(VIDEO)!r}, num_frames=4, backend='decord')\n"
            f"except DecordNotInstalled as error:\n"
            f"    print(type(error).__name__, isinstance(error, VideoDecodeError), error)\n"
            f"print(tuple(load_video({str(VIDEO)!r}, num_frames=4).frames.shape))  # the same decoder process\n")
    first, second = python(code, plain).splitlines()
    assert first.startswith("DecordNotInstalled False the decord backend needs the decord package")
    assert "ModuleNotFoundError" in first and "vlm-vision[decord]" in first
    assert second == "(4, 240, 320, 3)"


@pytest.fixture(scope="module")
def tiny_tower(tmp_path_factory) -> pathlib.Path:
    """A transformers CLIPVisionModel folder with tiny random weights."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(folder)
    return folder


def test_extract_command_works_and_backend_decord_is_an_input_error(no_decord, tiny_tower, tmp_path):
    out = tmp_path / "tokens"
    done = vlm_vision(no_decord, "extract", str(VIDEO), "--out", str(out), "--model", str(tiny_tower),
                      "--num-frames", "4")
    assert done.returncode == 0, done.stderr
    tokens = load_video_tokens(out / "realshort.safetensors")
    assert tuple(tokens.tokens.shape) == (4, 4, 32) and tokens.backend == "exact"
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["status"] == "ok"

    refused = tmp_path / "refused"
    done = vlm_vision(no_decord, "extract", str(VIDEO), "--out", str(refused), "--model", str(tiny_tower),
                      "--backend", "decord")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "vlm-vision extract: decord is not installed (--backend decord): the default --backend exact (PyAV, on "
        "every platform), or decord installed: pip install 'vlm-vision[decord]' (decord has wheels for Linux "
        "x86-64 only, where `pip install vlm-vision` includes it)")
    assert "Traceback" not in done.stderr and not refused.exists()
