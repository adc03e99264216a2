"""The source runs on Python 3.10 (requires-python), checked without a 3.10 interpreter.

Two independent checks over vlm_vision/, video/ and projector/ (and, for syntax, tests/,
examples/ and benchmarks/ too):
- syntax: every file compiles with `ast.parse(..., feature_version=(3, 10))`, which refuses the
  grammar added later (`except*`, PEP 695 generics and `type` aliases, ...);
- names: vermin finds no standard-library module, member, argument or builtin newer than 3.10
  (tomllib, typing.Self, datetime.UTC, enum.StrEnum, ExceptionGroup, ...). Its one false alarm
  here is torch's `.long()` / `torch.long`, read as Python 2's `long`: that rule is excluded.
Each check is shown to fail on a file that needs 3.11.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

from tests.project_metadata import REPO

PACKAGES = ("vlm_vision", "video", "projector")
SYNTAX_FOLDERS = (*PACKAGES, "tests", "examples", "benchmarks")
TARGET = (3, 10)


def python_files(folders: tuple[str, ...]) -> list[pathlib.Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def syntax_errors(paths: list[pathlib.Path]) -> list[str]:
    """`path:line: message` for each file that Python 3.10's grammar refuses."""
    errors = []
    for path in paths:
        try:
            ast.parse(path.read_text(), filename=str(path), feature_version=TARGET)
        except SyntaxError as error:
            errors.append(f"{path}:{error.lineno}: {error.msg}")
    return errors


def vermin(paths: list[str]) -> subprocess.CompletedProcess:
    """vermin over `paths`, targeting 3.10 and newer; exit status 0 when nothing needs more."""
    command = [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
               f"-t={TARGET[0]}.{TARGET[1]}-", "--violations", "--no-tips", "--exclude", "long", *paths]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)


def test_the_grammar_is_python_310():
    paths = python_files(SYNTAX_FOLDERS)
    assert len(paths) > 100
    assert syntax_errors(paths) == []


def test_no_standard_library_name_newer_than_310():
    done = vermin(list(PACKAGES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Minimum required versions: 3.10" in done.stdout  # what pattern matching etc. already need


@pytest.fixture
def needs_311(tmp_path) -> pathlib.Path:
    path = tmp_path / "needs_311.py"
    path.write_text("import datetime\nimport tomllib\nfrom typing import Self\n\n"
                    "def f(x: int) -> None:\n    print(datetime.UTC, x)\n")
    return path


def test_the_checks_can_fail(tmp_path, needs_311):
    done = vermin([str(needs_311)])
    assert done.returncode != 0
    assert "'tomllib' module requires !2, 3.11" in done.stdout and "'datetime.UTC' member" in done.stdout
    assert "'typing.Self' member" in done.stdout
    grouped = tmp_path / "grouped.py"
    grouped.write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    errors = syntax_errors([grouped, needs_311])  # needs_311's syntax is 3.10's: only its names are newer
    assert len(errors) == 1 and errors[0].startswith(f"{grouped}:")
    assert "Exception groups are only supported in Python 3.11 and greater" in errors[0]
