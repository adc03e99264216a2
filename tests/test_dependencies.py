"""pyproject.toml's dependency list and the package's imports, kept in step.

Every third-party module imported anywhere in vlm_vision/, video/ and projector/ (at module level,
inside functions, under TYPE_CHECKING: every import statement counts) comes from a declared
distribution; a distribution declared only in an extra is imported lazily and guarded (a missing
one costs a clear error, not an ImportError at `import vlm_vision`), and so is one whose
environment marker leaves it out somewhere (decord); every runtime dependency is
imported somewhere; every runtime dependency has a lower bound. decord, which has wheels for Linux
x86-64 only, is a runtime dependency there alone, and the `[decord]` extra elsewhere.

Adding a dependency: put it in pyproject.toml; if its import name is not its distribution name
(pillow -> PIL), add it to `tests.project_metadata.IMPORT_NAMES`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import pathlib
import sys

import pytest
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import Version

from tests.install_resolution import TARGETS, marker_environment
from tests.project_metadata import REPO, distribution, extras, import_name, lower_bound, runtime_requirements

PACKAGES = ("vlm_vision", "video", "projector")

# Imports of a distribution declared only in an extra that are guarded otherwise than by a
# `try: ... except ImportError` around them: import name -> why they only run where it is installed.
GUARDED_ELSEWHERE = {
    "deepspeed": "vlm_vision/training/sharded.py reaches it only for parameters DeepSpeed ZeRO-3 has partitioned "
                 "(`ds_id`), that is only in a run DeepSpeed drives, where it is installed",
}


@dataclasses.dataclass(frozen=True)
class Import:
    module: str
    """The top-level module imported, e.g. "PIL" for `from PIL import Image`."""
    where: str
    """path:line"""
    lazy: bool
    """Inside a function (run when called), not at import time."""
    guarded: bool
    """Inside `try:` whose handlers catch ImportError (or ModuleNotFoundError)."""


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {k.id for k in kinds if isinstance(k, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def third_party_imports() -> list[Import]:
    """Every import statement of a module outside the standard library and our packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            found += _imports_in(tree, str(path.relative_to(REPO)))
    return found


def _imports_in(tree: ast.AST, name: str) -> list[Import]:
    found = []

    def visit(node: ast.AST, lazy: bool, guarded: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module] if node.level == 0 and node.module else [])
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in PACKAGES:
                    found.append(Import(top, f"{name}:{node.lineno}", lazy, guarded))
        lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.Try):
            for child in node.body:
                visit(child, lazy, guarded or _catches_import_error(node))
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, lazy, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, lazy, guarded)

    visit(tree, False, False)
    return found


def provided_by(requirements: list[str]) -> dict[str, str]:
    """Import name -> the distribution providing it, for `requirements`."""
    return {import_name(distribution(r)): distribution(r) for r in requirements}


# A runtime requirement with an environment marker (decord) is missing somewhere: optional, as an extra.
RUNTIME = provided_by([r for r in runtime_requirements() if Requirement(r).marker is None])
OPTIONAL = provided_by([r for r in runtime_requirements() if Requirement(r).marker is not None]
                       + [r for reqs in extras().values() for r in reqs])
IMPORTS = third_party_imports()


def test_the_scan_sees_lazy_guarded_and_module_level_imports():
    source = ("import numpy as np\nfrom PIL import Image\nimport os, json\nfrom . import sibling\n"
              "from video.clip import VideoClip\n"
              "def f():\n    import yaml\n    try:\n        import decord\n    except ImportError:\n"
              "        import av\n")
    got = {(i.module, i.lazy, i.guarded) for i in _imports_in(ast.parse(source), "x.py")}
    assert got == {("numpy", False, False), ("PIL", False, False), ("yaml", True, False),
                   ("decord", True, True), ("av", True, False)}
    assert len(IMPORTS) > 100 and {"torch", "PIL", "decord", "yaml"} <= {i.module for i in IMPORTS}


@pytest.mark.parametrize("module", sorted({i.module for i in IMPORTS}))
def test_every_import_is_declared(module):
    sites = [i for i in IMPORTS if i.module == module]
    if module in RUNTIME:
        return
    assert module in OPTIONAL, (
        f"{', '.join(i.where for i in sites)}: imports {module!r}, which no requirement in pyproject.toml "
        f"provides: add its distribution to `dependencies` (or to an extra, imported lazily and guarded), and "
        f"its import name to tests/project_metadata.IMPORT_NAMES if it differs from the distribution's")
    eager = [i.where for i in sites if not i.lazy]
    assert not eager, f"{eager}: {module!r} comes from an extra ({OPTIONAL[module]}) but is imported at import time"
    unguarded = [i.where for i in sites if not i.guarded]
    assert not unguarded or module in GUARDED_ELSEWHERE, (
        f"{unguarded}: {module!r} comes from an extra ({OPTIONAL[module]}): import it inside "
        f"`try: ... except ImportError` that says how to install it")


@pytest.mark.parametrize("requirement", runtime_requirements())
def test_every_runtime_dependency_is_imported_and_bounded(requirement):
    name = distribution(requirement)
    module = import_name(name)
    assert module in {i.module for i in IMPORTS}, (
        f"{requirement!r} is a runtime dependency but no module of {PACKAGES} imports {module!r}: drop it, or map "
        f"its import name in tests/project_metadata.IMPORT_NAMES")
    bound = lower_bound(requirement)
    assert bound, f"{requirement!r}: give it the lower bound it was tested with (>=X)"
    installed = _installed(name)
    if installed is not None:  # decord is missing where it has no wheel
        assert Version(installed) >= Version(bound)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_decord_is_installed_only_where_it_has_wheels_and_is_an_extra():
    decord = [Requirement(r) for r in runtime_requirements() if distribution(r) == "decord"]
    assert len(decord) == 1 and decord[0].marker is not None
    where = {name for name, target in TARGETS.items()
             if all(decord[0].marker.evaluate(marker_environment(target, p)) for p in ("3.10", "3.13"))}
    assert where == {"linux-x86_64"}
    extra = [Requirement(r) for r in extras()["decord"]]
    assert [(r.name, r.specifier, r.marker) for r in extra] == [("decord", decord[0].specifier, None)]


def test_optional_imports_of_the_extras_are_guarded():
    """decord, a runtime dependency on Linux x86-64 only, is imported lazily and guarded."""
    decord = [i for i in IMPORTS if i.module == "decord"]
    assert decord and all(i.lazy and i.guarded for i in decord), decord
