#!/usr/bin/env python3
"""Which assertions of the test suite went missing between two versions of the repository.

A restructuring moves test files and renames modules; it should not lose a check on the way. This
script reads every `tests/**/*.py` at two versions (a git ref, or the working tree), and collects,
for each test function, the multiset of its assertions:

- `assert` statements (the condition; the message is left out, rewording it loses nothing);
- `pytest.raises` / `pytest.warns` / `pytest.approx` calls, their `match=` included;
- `torch.testing.assert_close`, `np.testing.assert_*` and any other `assert_*` call.

A test is named by its qualified name without the file (`test_name`, `Class.test_name`,
`test_name.helper`), since files moved. Each assertion is written back with `ast.unparse`, after two
rewrites that make a moved module read the same in both versions:

- a name bound by an import to one of our modules (`from vlm_vision import train_setup`) is replaced
  by that module's dotted path, so `train_setup.x` and `setup.x` both read `vlm_vision....x`;
- every dotted (`vlm_vision.train_cli`) or slashed (`vlm_vision/train_cli.py`) path to one of our
  modules is sent through the map of moves (`module_moves.json` beside this script, chains followed).

An assertion of a test at the first version that is missing from the same test at the second is
*removed*. When the same text turns up as a new assertion of another test (a test renamed, split or
merged), it is listed as *moved* and does not count as removed. Exit status 1 when anything was
removed, unless the allow-file names it with a reason: a JSON list of
`{"test": ..., "assertion": ... or "*", "reason": ...}` (default: `allowed_removals.json` beside this
script; `--allow-file ''` for none).

Usage:
    python .ci/compare_assertions.py                       # ca1821a against the working tree
    python .ci/compare_assertions.py --before A --after B  # two refs
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

__all__ = ["Comparison", "compare", "collect", "main"]

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_BEFORE = "ca1821a"  # the commit before issue 26's restructuring
WORKTREE = "WORKTREE"
PACKAGES = ("vlm_vision", "video", "projector")
ASSERTING_CALLS = {"pytest.raises", "pytest.warns", "pytest.approx", "raises", "warns", "approx"}
DOTTED = re.compile(r"\b(?:%s)(?:\.[A-Za-z_]\w*)+" % "|".join(PACKAGES))
SLASHED = re.compile(r"\b(?:%s)(?:/[A-Za-z_]\w*)+(?:\.py)?" % "|".join(PACKAGES))


# ----- reading a version ---------------------------------------------------------------------------


def _git(repo: pathlib.Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def read_version(repo: pathlib.Path, ref: str) -> tuple[dict[str, str], set[str]]:
    """(test file path -> its text, the dotted names of our modules) at `ref`, or in the working tree."""
    if ref == WORKTREE:
        paths = [p.relative_to(repo).as_posix() for p in sorted(repo.rglob("*.py"))
                 if ".git" not in p.parts and "__pycache__" not in p.parts]
        read = {p: (repo / p).read_text() for p in paths if p.startswith("tests/")}
    else:
        paths = _git(repo, "ls-tree", "-r", "--name-only", ref).splitlines()
        paths = [p for p in paths if p.endswith(".py")]
        read = {p: _git(repo, "show", f"{ref}:{p}") for p in paths if p.startswith("tests/")}
    modules = set()
    for path in paths:
        parts = pathlib.PurePosixPath(path).with_suffix("").parts
        if parts[0] in PACKAGES:
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return read, modules


# ----- normalizing names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Moves:
    """The map old module -> new module, applied to a dotted name by its longest matching prefix."""

    table: dict[str, str]

    def _longest(self, parts: list[str], names) -> int:
        return max((n for n in range(1, len(parts) + 1) if ".".join(parts[:n]) in names), default=0)

    def apply(self, dotted: str) -> str:
        """`dotted` with its module renamed, chains followed (a->b, b->c gives c).

        A name whose longest prefix that is a *new* module is longer than its longest prefix that is an
        *old* one is left alone, so `vlm_vision.training.loop` does not become `...training.loop.loop`
        through the move `vlm_vision.training -> vlm_vision.training.loop`.
        """
        values = set(self.table.values())
        for _ in range(len(self.table) + 1):
            parts = dotted.split(".")
            old, new = self._longest(parts, self.table), self._longest(parts, values)
            if old == 0 or new > old:
                return dotted
            dotted = ".".join([self.table[".".join(parts[:old])], *parts[old:]])
        raise ValueError(f"the map of moves loops on {dotted!r}")

    def text(self, text: str) -> str:
        """`text` with every dotted and slashed path to one of our modules renamed."""
        text = DOTTED.sub(lambda m: self.apply(m.group(0)), text)

        def slashed(m: re.Match) -> str:
            path = m.group(0)
            suffix = ".py" if path.endswith(".py") else ""
            dotted = self.apply(path[: len(path) - len(suffix)].replace("/", "."))
            return dotted.replace(".", "/") + suffix

        return SLASHED.sub(slashed, text)


def load_moves(path: pathlib.Path) -> Moves:
    return Moves(dict(json.loads(path.read_text())["moves"]))


def _module_aliases(tree: ast.Module, modules: set[str]) -> dict[str, str]:
    """Local name -> dotted module, for each import in the file that binds one of our modules."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:
                    aliases[alias.asname or alias.name] = full
    return aliases


class _Expand(ast.NodeTransformer):
    """Replaces a name bound to one of our modules by the module's dotted path."""

    def __init__(self, aliases: dict[str, str]):
        self.aliases = aliases

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.aliases:
            return ast.parse(self.aliases[node.id], mode="eval").body
        return node


# ----- collecting assertions -----------------------------------------------------------------------


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def _is_asserting_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    name = _call_name(node)
    last = name.rpartition(".")[2]
    return name in ASSERTING_CALLS or last.startswith("assert_") or re.fullmatch(r"assert[A-Z]\w*", last) is not None


def _assertions(body: list[ast.stmt]) -> list[ast.AST]:
    """The assertion nodes directly in `body` (nested functions and classes are their own tests)."""
    found = []
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Assert):
            found.append(ast.Assert(test=node.test, msg=None))
            continue  # a pytest.approx inside is part of this assert's text
        if _is_asserting_call(node):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def collect(text: str, modules: set[str], moves: Moves, filename: str = "<test>") -> Counter:
    """(qualified test name, assertion text) -> how many times, for one test file."""
    tree = ast.parse(text, filename=filename)
    expand = _Expand(_module_aliases(tree, modules))
    found: Counter = Counter()

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in _assertions(body):
            node = expand.visit(ast.parse(ast.unparse(node)).body[0])  # a copy, expanded
            text = ast.unparse(node.value if isinstance(node, ast.Expr) else node)
            found[(prefix or "<module>", moves.text(text))] += 1
        for node in _children_defs(body):
            visit(node.body, f"{prefix}.{node.name}" if prefix else node.name)

    visit(tree.body, "")
    return found


def _children_defs(body: list[ast.stmt]) -> list[ast.AST]:
    """Functions and classes defined in `body`, at any depth of its non-definition statements."""
    defs, stack = [], list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs.append(node)
        else:
            stack.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt))
    return defs


def collect_version(repo: pathlib.Path, ref: str, moves: Moves) -> Counter:
    files, modules = read_version(repo, ref)
    modules = modules | {moves.apply(m) for m in modules}
    total: Counter = Counter()
    for path, text in files.items():
        total.update(collect(text, modules, moves, filename=f"{ref}:{path}"))
    return total


# ----- comparing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """What the second version lost of the first's assertions."""

    before: int  # assertions at the first version
    after: int  # at the second
    removed: list[tuple[str, str]]  # (test, assertion), once per lost copy
    moved: list[tuple[str, str, str]]  # (from test, to test, assertion)


def compare(before: Counter, after: Counter) -> Comparison:
    lost = before - after
    gained = after - before
    spare: dict[str, list[str]] = {}  # assertion text -> tests that gained it, one entry per copy
    for (test, text), n in sorted(gained.items()):
        spare.setdefault(text, []).extend([test] * n)
    removed, moved = [], []
    for (test, text), n in sorted(lost.items()):
        for _ in range(n):
            if spare.get(text):
                moved.append((test, spare[text].pop(0), text))
            else:
                removed.append((test, text))
    return Comparison(sum(before.values()), sum(after.values()), removed, moved)


def allowed(removed: list[tuple[str, str]], allow_file: pathlib.Path | None) -> tuple[list, list]:
    """(removals still unexplained, removals the allow-file explains) for `removed`."""
    if allow_file is None:
        return list(removed), []
    entries = json.loads(allow_file.read_text())
    for entry in entries:
        if not str(entry.get("reason", "")).strip():
            raise ValueError(f"{allow_file}: entry {entry} has no reason; each removal needs one")
    unexplained, explained = [], []
    for test, text in removed:
        match = [e for e in entries if e["test"] == test and e["assertion"] in ("*", text)]
        (explained if match else unexplained).append((test, text, *(m["reason"] for m in match[:1])))
    return unexplained, explained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git ref (default %(default)s)")
    parser.add_argument("--after", default=WORKTREE, help=f"git ref, or {WORKTREE} (default)")
    parser.add_argument("--repo", type=pathlib.Path, default=pathlib.Path.cwd(), help="the repository")
    parser.add_argument("--moves", type=pathlib.Path, default=HERE / "module_moves.json")
    parser.add_argument("--allow-file", help="JSON list of removals with reasons (default: allowed_removals.json "
                                             "beside this script, when there is one; '' for none)")
    args = parser.parse_args(argv)
    repo = pathlib.Path(_git(args.repo, "rev-parse", "--show-toplevel").strip())
    moves = load_moves(args.moves)
    result = compare(collect_version(repo, args.before, moves), collect_version(repo, args.after, moves))
    allow_file = pathlib.Path(args.allow_file) if args.allow_file else None
    if args.allow_file is None and (HERE / "allowed_removals.json").exists():
        allow_file = HERE / "allowed_removals.json"
    unexplained, explained = allowed(result.removed, allow_file)
    print(f"assertions: {result.before} at {args.before}, {result.after} at {args.after}")
    print(f"removed: {len(result.removed)} ({len(explained)} with a reason in the allow-file)")
    for test, text in unexplained:
        print(f"  REMOVED  {test}: {text}")
    for test, text, reason in explained:
        print(f"  allowed  {test}: {text}  -- {reason}")
    print(f"moved to another test: {len(result.moved)}")
    for source, target, text in result.moved:
        print(f"  moved    {source} -> {target}: {text}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
