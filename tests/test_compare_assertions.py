""".ci/compare_assertions.py on a tiny repository of two commits: a test file renamed, its module
moved, a test renamed, one assertion's message reworded and one assertion removed. The script must
name exactly the removed assertion, and no other."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from tests.project_metadata import REPO

SCRIPT = REPO / ".ci" / "compare_assertions.py"

BEFORE = '''
import pytest
from vlm_vision import old


def test_numbers():
    assert old.f() == 1
    assert old.g() == 2, "g is two"


def test_refusal():
    with pytest.raises(ValueError, match="bad count"):
        old.f(-1)


class TestScale:
    def test_close(self):
        assert old.scale(3) == pytest.approx(1.5)
'''

AFTER = '''
import pytest
from vlm_vision.sub import new


def test_numbers():
    assert new.f() == 1
    assert vlm_vision.sub.new.g() == 2, "reworded: g is 2"
    assert new.h() == 3


def test_refusal_names_the_count():
    with pytest.raises(ValueError, match="bad count"):
        new.f(-1)


class TestScale:
    def test_close(self):
        pass
'''


def _git(repo: pathlib.Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def _write(repo: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)


def _repo(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _write(repo, {"vlm_vision/__init__.py": "", "vlm_vision/old.py": "def f(): return 1\n",
                  "tests/__init__.py": "", "tests/test_old.py": BEFORE})
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "before")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "vlm_vision/old.py").unlink()
    (repo / "tests/test_old.py").unlink()
    _write(repo, {"vlm_vision/sub/__init__.py": "", "vlm_vision/sub/new.py": "def f(): return 1\n",
                  "tests/sub/__init__.py": "", "tests/sub/test_new.py": AFTER})
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "after")
    return repo, first, _git(repo, "rev-parse", "HEAD")


def _run(repo: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--repo", str(repo), *args],
                          capture_output=True, text=True)


def test_reports_exactly_the_removed_assertion(tmp_path):
    repo, first, second = _repo(tmp_path)
    moves = tmp_path / "moves.json"
    moves.write_text(json.dumps({"moves": {"vlm_vision.old": "vlm_vision.sub.new"}}))
    result = _run(repo, "--before", first, "--after", second, "--moves", str(moves))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"assertions: 4 at {first}, 4 at {second}"
    removed = [line.strip() for line in lines if line.strip().startswith("REMOVED")]
    assert removed == ["REMOVED  TestScale.test_close: assert vlm_vision.sub.new.scale(3) == pytest.approx(1.5)"]
    moved = [line.strip() for line in lines if line.strip().startswith("moved  ")]
    assert moved == ["moved    test_refusal -> test_refusal_names_the_count: "
                     "pytest.raises(ValueError, match='bad count')"]


def test_the_working_tree_is_the_default_second_version(tmp_path):
    repo, first, _ = _repo(tmp_path)
    moves = tmp_path / "moves.json"
    moves.write_text(json.dumps({"moves": {"vlm_vision.old": "vlm_vision.sub.new"}}))
    text = (repo / "tests/sub/test_new.py").read_text()
    (repo / "tests/sub/test_new.py").write_text(text.replace("        pass\n",
                                                             "        assert new.scale(3) == pytest.approx(1.5)\n"))
    result = _run(repo, "--before", first, "--moves", str(moves))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed: 0" in result.stdout


def test_without_the_map_a_moved_module_reads_as_removed(tmp_path):
    repo, first, second = _repo(tmp_path)
    moves = tmp_path / "moves.json"
    moves.write_text(json.dumps({"moves": {}}))
    result = _run(repo, "--before", first, "--after", second, "--moves", str(moves))
    removed = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("REMOVED")]
    assert "REMOVED  test_numbers: assert vlm_vision.old.f() == 1" in removed
    assert result.returncode == 1


def test_an_allow_file_with_reasons_lets_it_pass(tmp_path):
    repo, first, second = _repo(tmp_path)
    moves = tmp_path / "moves.json"
    moves.write_text(json.dumps({"moves": {"vlm_vision.old": "vlm_vision.sub.new"}}))
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps([{"test": "TestScale.test_close", "assertion": "*",
                                  "reason": "scale() was dropped"}]))
    result = _run(repo, "--before", first, "--after", second, "--moves", str(moves), "--allow-file", str(allow))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "allowed  TestScale.test_close: assert vlm_vision.sub.new.scale(3) == pytest.approx(1.5)" \
           "  -- scale() was dropped" in result.stdout
    allow.write_text(json.dumps([{"test": "TestScale.test_close", "assertion": "*", "reason": " "}]))
    refused = _run(repo, "--before", first, "--after", second, "--moves", str(moves), "--allow-file", str(allow))
    assert refused.returncode != 0 and "has no reason" in refused.stderr


def test_the_shipped_map_follows_chains_and_leaves_new_names_alone():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import compare_assertions
    finally:
        sys.path.remove(str(SCRIPT.parent))
    moves = compare_assertions.load_moves(SCRIPT.parent / "module_moves.json")
    assert moves.apply("vlm_vision.training.train") == "vlm_vision.training.loop.train"
    assert moves.apply("vlm_vision.training.loop.train") == "vlm_vision.training.loop.train"
    assert moves.apply("vlm_vision.cli_errors.InputError") == "vlm_vision.errors.InputError"
    assert moves.text("'vlm_vision/train_cli.py' in vlm_vision.cli.main") == \
        "'vlm_vision/commands/train.py' in vlm_vision.commands.main.main"
