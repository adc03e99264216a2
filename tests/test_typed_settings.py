"""Below the commands, settings are typed: no module outside `vlm_vision/commands` takes an argparse namespace.

A command (`vlm_vision/commands/<name>.py`) parses its flags and builds the job's frozen dataclass
(`TrainConfig`, `EvalConfig`, `ExtractSettings`, ...); the jobs, `video` and `projector` see only that.
Read from the source with `ast` (nothing is imported). Outside the commands, none of:

- `import argparse` (or `from argparse import ...`);
- a parameter annotated `Namespace` / `argparse.Namespace`;
- a parameter named like a namespace (`args`, `options`, `opts`, `namespace`) that is unannotated or `Any`
  (`*args` is not one);
- `getattr(args, "name", default)` or `getattr(options, ...)`: a default filled in far from its field.

Each rule is also run on a small tree that breaks it, so the check can fail.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("projector", "video", "vlm_vision")
COMMANDS = ("vlm_vision", "commands")
NAMESPACE_NAMES = {"args", "options", "opts", "namespace"}


def _below_commands(root: pathlib.Path) -> list[pathlib.Path]:
    """Every module of the packages under `root` that is not a command."""
    return [path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))
            if path.relative_to(root).parts[:2] != COMMANDS]


def _is_namespace_type(annotation: ast.expr | None) -> bool:
    return annotation is not None and ast.unparse(annotation).split(".")[-1].strip("'\"") == "Namespace"


def _untyped(annotation: ast.expr | None) -> bool:
    return annotation is None or ast.unparse(annotation).strip("'\"") in ("Any", "typing.Any", "object")


def namespace_uses(root: pathlib.Path) -> list[str]:
    """`path:line: what` for each place below the commands that takes or reads an argparse namespace, in
    file and line order."""
    found = []
    for path in _below_commands(root):
        where = path.relative_to(root)
        start = len(found)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                found.append(f"{where}:{node.lineno}: imports argparse")
            elif isinstance(node, ast.ImportFrom) and node.module == "argparse":
                found.append(f"{where}:{node.lineno}: imports from argparse")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                for arg in a.posonlyargs + a.args + a.kwonlyargs:
                    if _is_namespace_type(arg.annotation):
                        found.append(f"{where}:{arg.lineno}: parameter {arg.arg} is a Namespace")
                    elif arg.arg in NAMESPACE_NAMES and _untyped(arg.annotation):
                        found.append(f"{where}:{arg.lineno}: parameter {arg.arg} is untyped (a namespace?)")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in NAMESPACE_NAMES):
                found.append(f"{where}:{node.lineno}: getattr({node.args[0].id}, ...) reads a namespace")
        found[start:] = sorted(found[start:], key=lambda text: int(text.split(":")[1]))  # stable: same-line order kept
    return found


def test_no_module_below_the_commands_takes_a_namespace():
    assert namespace_uses(ROOT) == []


def test_the_check_catches_each_kind(tmp_path):
    (tmp_path / "video").mkdir()
    (tmp_path / "vlm_vision" / "commands").mkdir(parents=True)
    (tmp_path / "video" / "bad.py").write_text(
        "import argparse\n"
        "from typing import Any\n"
        "def a(options: Any, *args): return getattr(options, 'min_frames', 1)\n"
        "def b(args: argparse.Namespace): pass\n"
        "def c(x, opts=None): pass\n"
        "def d(config: 'Settings', *args: int, **kwargs: Any): pass\n")
    (tmp_path / "vlm_vision" / "commands" / "ok.py").write_text(
        "import argparse\ndef run(args: argparse.Namespace) -> int: return getattr(args, 'x', 0)\n")
    assert namespace_uses(tmp_path) == [
        "video/bad.py:1: imports argparse",
        "video/bad.py:3: parameter options is untyped (a namespace?)",
        "video/bad.py:3: getattr(options, ...) reads a namespace",
        "video/bad.py:4: parameter args is a Namespace",
        "video/bad.py:5: parameter opts is untyped (a namespace?)",
    ]
