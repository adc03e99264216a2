"""The layer rules of ARCHITECTURE.md, read from the source (no module is imported here).

Every import statement of the three packages is parsed with `ast`, module-level and inside
functions alike (an import hidden in a function still makes a cycle); imports under
`if TYPE_CHECKING:` are left out, since they never run. The rules:

- `projector` and `video` are the lower layers: they never import `vlm_vision`, nor each other;
- no import cycle between modules, of any length;
- an import inside a function says why on its first line (`# lazy: <reason>`);
- no private (underscore) name is imported from another module: shared pieces are public;
- no module is over `MAX_LINES` lines.

Each rule is also run on a small tree written here that breaks it, so the checks can fail.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("projector", "video", "vlm_vision")
# package -> the packages it may import. The lower layers stand alone; vlm_vision builds on both.
ALLOWED = {"projector": set(), "video": set(), "vlm_vision": {"projector", "video"}}
MAX_LINES = 600
LAZY_MARK = "# lazy:"


@dataclass(frozen=True)
class Import:
    """One imported module of ours, where the import stands and whether it runs inside a function."""

    source: str  # importing module, dotted
    target: str  # imported module of ours, dotted
    names: tuple[str, ...]  # names taken with `from target import ...`
    line: int
    local: bool  # inside a function or class body
    text: str  # the import's first source line


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py file of the packages under `root`."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for inner in ast.walk(node))
    return skipped


def _local_nodes(tree: ast.Module) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            inside.update(id(inner) for inner in ast.walk(node) if inner is not node)
    return inside


def _resolve(name: str, known: dict[str, pathlib.Path]) -> str | None:
    """The module of ours that `name` (a module, or a name inside one) belongs to."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(root: pathlib.Path) -> list[Import]:
    """Every import of one of our modules by one of our modules."""
    known = modules(root)
    found = []
    for source, path in known.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, filename=str(path))
        skipped, local = _type_checking_nodes(tree), _local_nodes(tree)
        package_parts = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                wanted = [(alias.name, ()) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` steps up
                    parts = package_parts[: len(package_parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = tuple(alias.name for alias in node.names)
                # `from pkg import module` imports the module; `from module import name` the module
                wanted = [(f"{base}.{n}" if f"{base}.{n}" in known else base, (n,)) for n in names]
            for name, names in wanted:
                target = _resolve(name, known)
                if target is not None and target != source:
                    found.append(Import(source, target, names, node.lineno, id(node) in local,
                                        lines[node.lineno - 1].strip()))
    return found


def upward(found: list[Import]) -> list[str]:
    return sorted({f"{i.source}:{i.line} imports {i.target}" for i in found
                   if i.target.split(".")[0] != i.source.split(".")[0]
                   and i.target.split(".")[0] not in ALLOWED[i.source.split(".")[0]]})


def cycles(found: list[Import]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def unexplained_local_imports(root: pathlib.Path) -> list[str]:
    """Imports inside functions (of anything, ours or not) whose first line lacks `# lazy: <reason>`."""
    bad = []
    for name, path in modules(root).items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        skipped, local = _type_checking_nodes(tree), _local_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) in local and id(node) not in skipped:
                line = lines[node.lineno - 1]
                reason = line.partition(LAZY_MARK)[2].strip()
                if not reason:
                    bad.append(f"{name}:{node.lineno}: {line.strip()}")
    return bad


def private_imports(found: list[Import]) -> list[str]:
    """Underscore names taken from another module (a package's own private module may be imported)."""
    return [f"{i.source}:{i.line} takes {n} from {i.target}" for i in found for n in i.names
            if n.startswith("_") and not n.startswith("__") and i.target.rpartition(".")[2] != n]


def long_modules(root: pathlib.Path) -> list[str]:
    return [f"{name}: {n} lines" for name, path in modules(root).items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES]


# ----- the rules, on our source ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ours() -> list[Import]:
    found = imports(ROOT)
    assert len(found) > 100, f"only {len(found)} imports found: is the parser reading the packages?"
    return found


def test_lower_layers_never_import_upper_ones(ours):
    assert upward(ours) == []


def test_no_import_cycles(ours):
    assert cycles(ours) == []


def test_function_level_imports_say_why():
    assert unexplained_local_imports(ROOT) == []


def test_no_private_names_cross_modules(ours):
    assert private_imports(ours) == []


def test_modules_stay_small():
    assert long_modules(ROOT) == []


# ----- the checks can fail ----------------------------------------------------------------------------


def _tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_checks_catch_a_broken_tree(tmp_path):
    root = _tree(tmp_path, {
        "video/a.py": "from vlm_vision.b import thing\n",  # upward
        "vlm_vision/b.py": "from . import c\nthing = 1\n",  # b -> c -> d -> b: a cycle of three
        "vlm_vision/c.py": "def f():\n    import vlm_vision.d\n",  # local, no reason
        "vlm_vision/d.py": "from vlm_vision.b import _hidden  # private\nfrom vlm_vision import _e\n",
        "vlm_vision/_e.py": "",  # a private module of the package: its own modules may use it
        "projector/e.py": "import torch\n" + "x = 1\n" * MAX_LINES,
        "projector/f.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import vlm_vision.b\n"
                          "def g():\n    import torch  # lazy: heavy\n",
    })
    found = imports(root)
    assert upward(found) == ["video.a:1 imports vlm_vision.b"]
    assert cycles(found) == [["vlm_vision.b", "vlm_vision.c", "vlm_vision.d"]]
    assert unexplained_local_imports(root) == ["vlm_vision.c:2: import vlm_vision.d"]
    assert private_imports(found) == ["vlm_vision.d:1 takes _hidden from vlm_vision.b"]
    assert long_modules(root) == [f"projector.e: {MAX_LINES + 1} lines"]
