"""The layer rules of ARCHITECTURE.md, read from the source (no module is imported here).

Every import statement of the three packages is parsed with `ast`, module-level, inside functions
and under `if TYPE_CHECKING:` alike (an import hidden in a function still makes a cycle, and so does
one that exists only for a type hint). The rules:

- `projector` and `video` are the lower layers: they never import `vlm_vision`, nor each other;
- inside a package, imports point down the layers of `LAYERS` (vlm_vision: commands -> export ->
  training -> evaluation -> data -> model -> errors; video: corpus -> the core), lazy and
  type-only ones included; the packages' `__init__.py` (the lazy public maps) stand outside the layers
  and no module of the package imports them;
- no import cycle between modules, of any length;
- an import inside a function says why on its first line (`# lazy: <reason>`);
- no private (underscore) name is imported from another module: shared pieces are public;
- no module is over `MAX_LINES` lines;
- tests mirror the tree: a module with logic of its own has tests/<its folder>/test_<name>.py, unless
  `TESTED_ELSEWHERE` says where its logic is tested; every tests/**/test_*.py mirrors a module or is
  one of the `CROSS_CUTTING` files;
- the walks of ARCHITECTURE.md (one video through `extract`, one record through `train`) follow real
  imports and cross each folder once, down the layers.

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
# Inside each package, its layers top to bottom: a subpackage, a root module, or "" for the package's
# other root modules. A module imports its own layer and lower ones only. vlm_vision has no "": its
# one root module besides the public map is `errors` (InputError, exit codes), at the bottom.
LAYERS = {
    "vlm_vision": ("commands", "export", "training", "evaluation", "data", "model", "errors"),
    "video": ("corpus", ""),
    "projector": ("",),
}
# The packages' __init__.py: lazy maps public name -> home module, for users. They sit outside the
# layers (they name everything), and no module of their own package imports them.
PUBLIC_MAPS = ("vlm_vision", "video")
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
    typing_only: bool = False  # under `if TYPE_CHECKING:`

    def how(self) -> str:
        """Where the import stands, when it is not a plain module-level one."""
        return " (under TYPE_CHECKING)" if self.typing_only else " (lazy)" if self.local else ""


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
    """Every import of one of our modules by one of our modules, those under TYPE_CHECKING included."""
    known = modules(root)
    found = []
    for source, path in known.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, filename=str(path))
        skipped, local = _type_checking_nodes(tree), _local_nodes(tree)
        package_parts = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
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
                                        lines[node.lineno - 1].strip(), id(node) in skipped))
    return found


def upward(found: list[Import]) -> list[str]:
    """Imports from one package into another that `ALLOWED` does not list."""
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


def layer(module: str) -> tuple[str, int] | None:
    """(layer name, depth: 0 is the top) of `module` in its package's `LAYERS`; None outside them."""
    package, _, rest = module.partition(".")
    order = LAYERS[package]
    head = rest.partition(".")[0]
    if head in order:
        return f"{package}.{head}", order.index(head)
    if "" in order and rest and "." not in rest:  # a root module of a package that has a root layer
        return package, order.index("")
    return None


def layer_violations(root: pathlib.Path, found: list[Import]) -> list[str]:
    """Modules in no layer, and imports inside a package that climb its layers or take its public map."""
    bad = {f"{name}: in no layer of {name.partition('.')[0]} (LAYERS)" for name in modules(root)
           if name not in PUBLIC_MAPS and name.partition(".")[0] in LAYERS and layer(name) is None}
    for i in found:
        package = i.source.partition(".")[0]
        if i.source in PUBLIC_MAPS or i.target.partition(".")[0] != package:
            continue  # the public maps name everything; package to package is `upward`'s rule
        if i.target in PUBLIC_MAPS:
            bad.add(f"{i.source}:{i.line} imports the public map {i.target}{i.how()}: name the home module")
            continue
        here, there = layer(i.source), layer(i.target)
        if here is not None and there is not None and there[1] < here[1]:
            bad.add(f"{i.source}:{i.line} imports {i.target}{i.how()}: {there[0]} is above {here[0]}")
    return sorted(bad)


# Source modules with logic but no test module of their own, and where their logic is tested. An
# entry goes when the module gets its own tests/<path>/test_<name>.py (a stale entry fails the rule).
TESTED_ELSEWHERE: dict[str, str] = {
    # video's corpus wing: driven end to end by `vlm-vision extract`
    "video.corpus.decode_jobs": "tests/vlm_vision/commands/test_extract.py (workers, the killed-run resume)",
    "video.corpus.encode": "tests/vlm_vision/commands/test_extract.py (OOM retries, a failing write)",
    "video.corpus.run": "tests/vlm_vision/commands/test_extract.py (every run of the command goes through it)",
    # commands: flags and calls, run by the tests of every command
    "vlm_vision.commands.data": "tests/vlm_vision/data/test_formats.py runs `vlm-vision convert-data`",
    "vlm_vision.commands.eval": "tests/vlm_vision/evaluation/test_run.py runs `vlm-vision eval` (flags, exit codes, --report)",
    "vlm_vision.errors": "tests/vlm_vision/commands/test_main.py (exit 2, --debug) and test_input_checks.py",
    "vlm_vision.commands.export": "tests/vlm_vision/export/test_folder.py runs `vlm-vision export`",
    "vlm_vision.commands.extract_tower": "tests/vlm_vision/commands/test_extract.py (tiny, random and missing weights)",
    "vlm_vision.evaluation.processes": "commands/test_extract.py (accelerate launch), test_input_checks.py (torchrun)",
    # evaluation
    "vlm_vision.evaluation.demo_model": "tests/vlm_vision/commands/test_demo.py (requests checked, answers)",
    "vlm_vision.evaluation.demo_server": "tests/vlm_vision/commands/test_demo.py (the server driven in Chromium)",
    "vlm_vision.evaluation.media": "tests/vlm_vision/evaluation/test_answers.py (videos, token files, images)",
    "vlm_vision.evaluation.model": "evaluation/test_answers.py and export/test_folder.py (load_eval_model)",
    # export: the folder's parts, read back from real exports
    "vlm_vision.export.llava_own": "tests/vlm_vision/export/test_folder.py (LLaVA's own folders exported)",
    "vlm_vision.export.model_card": "tests/vlm_vision/export/test_folder.py (every export's README.md read back)",
    "vlm_vision.export.source": "tests/vlm_vision/export/test_folder.py (runs, transformers, LLaVA folders)",
    # model: weights of every layout are written and loaded by one test file
    "vlm_vision.model.checkpoint_keys": "tests/vlm_vision/model/test_vision_weights.py (key maps, shapes named)",
    "vlm_vision.model.torchscript_weights": "tests/vlm_vision/model/test_vision_weights.py (read, never run)",
    "vlm_vision.model.llava_checkpoint": "model/test_interchange.py, test_anyres_fusion.py, export/test_folder.py",
    "vlm_vision.model.parts": "a dataclass without methods, filled by both converters (model/test_interchange.py)",
    # training: the loop's parts, tested through the loop
    "vlm_vision.training.checkpoint": "tests/vlm_vision/training/test_loop.py (resume reproduces the losses)",
    "vlm_vision.training.config": "tests/vlm_vision/training/test_loop.py (test_config_rejects_bad_values)",
    "vlm_vision.training.log": "tests/vlm_vision/training/test_loop.py and test_setup.py (RunLog of every run)",
    "vlm_vision.training.params": "tests/vlm_vision/training/test_loop.py (learning rates, frozen weights)",
    "vlm_vision.model.run_folder": "tests/vlm_vision/training/test_loop.py (save then load: identical outputs)",
}
# Test files (or folders) that mirror no one module: each checks the project across modules.
CROSS_CUTTING: dict[str, str] = {
    "tests/gpu": "the GPU runs of several modules' tests, apart so that CI without CUDA skips a folder",
    "tests/test_architecture.py": "these rules, over every module of the three packages",
    "tests/test_compare_assertions.py": "tests .ci/compare_assertions.py, a CI script outside the packages",
    "tests/test_dependencies.py": "pyproject.toml's dependencies against every import of the packages",
    "tests/test_install_matrix.py": "pyproject.toml's bounds, resolved against the package index's versions",
    "tests/test_python310.py": "every file against Python 3.10's grammar and standard library",
    "tests/test_readme.py": "README.md's code blocks and commands, run as written",
    "tests/test_docs.py": "docs/: every page's code blocks and commands, the API pages, the strict mkdocs build",
    "tests/test_typed_settings.py": "no argparse namespace below the commands, an AST rule over the three packages",
    "tests/test_example_video_qa.py": "examples/video_qa.py, run end to end",
    "tests/video/test_without_decord.py": "the three packages and the extract command on a machine without decord",
    "tests/vlm_vision/test_frame_scale_users.py": "one frame loader for extract, training and eval",
    "tests/vlm_vision/commands/test_interrupt.py": "Ctrl-C in every command, each a real process",
    "tests/vlm_vision/export/test_interop.py": "an export loaded by transformers alone, in its own environment",
    "tests/vlm_vision/model/test_anyres_fusion.py": "anyres in fusion, processor, converters vs LLaVA-NeXT",
    "tests/vlm_vision/model/test_multi_media.py": "several videos and images a record: counted, batched, trained",
    "tests/vlm_vision/training/test_loop_slow.py": "slow whole runs: two processes, a real LLM, the example",
    "tests/vlm_vision/training/test_record_shapes.py": "community data shapes and mixtures through the real loop",
    "tests/vlm_vision/training/test_video_prompt.py": "time prompts and SlowFast through training and eval",
}


def has_logic(path: pathlib.Path) -> bool:
    """Whether the module defines a function or a class of its own."""
    tree = ast.parse(path.read_text())
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for node in tree.body)


def mirror(root: pathlib.Path, module: str) -> pathlib.Path:
    """The test file of `module`: tests/<its folder>/test_<name>.py; a package's own test_package.py."""
    path = modules(root)[module].relative_to(root)
    name = "package" if path.name == "__init__.py" else path.stem
    return root / "tests" / path.parent / f"test_{name}.py"


def untested_modules(root: pathlib.Path, elsewhere: dict[str, str] = TESTED_ELSEWHERE) -> list[str]:
    """Modules with logic and no mirrored test file that `elsewhere` does not explain, and entries of
    `elsewhere` that no longer explain anything (the module gone, or tested in its own file now)."""
    known = modules(root)
    missing = [f"{name}: no {mirror(root, name).relative_to(root).as_posix()}" for name, path in known.items()
               if has_logic(path) and not mirror(root, name).exists() and name not in elsewhere]
    stale = [f"{name}: in TESTED_ELSEWHERE but " + ("gone" if name not in known else "it has its own tests")
             for name in elsewhere if name not in known or mirror(root, name).exists()]
    return missing + stale


def stray_tests(root: pathlib.Path, cross_cutting: dict[str, str] = CROSS_CUTTING) -> list[str]:
    """Test files that mirror no module and are not `cross_cutting`, and stale `cross_cutting` entries."""
    mirrored = {mirror(root, name) for name in modules(root)}
    listed = [root / rel for rel in cross_cutting]
    stray = [path.relative_to(root).as_posix() for path in sorted((root / "tests").rglob("test_*.py"))
             if path not in mirrored and not any(path == p or p in path.parents for p in listed)]
    stale = [f"{rel}: in CROSS_CUTTING but gone" for rel in cross_cutting if not (root / rel).exists()]
    return stray + stale


def documented_walks(text: str) -> dict[str, list[str]]:
    """The walks of ARCHITECTURE.md: each fenced block opened by ```walk <name>, one module a line
    (the module's dotted name first; what follows it on the line is prose)."""
    walks, name = {}, None
    for line in text.splitlines():
        if line.startswith("```walk "):
            name = line.split()[1]
            walks[name] = []
        elif line.startswith("```"):
            name = None
        elif name is not None and line.strip():
            walks[name].append(line.split()[0])
    return walks


def walk_errors(walk: list[str], found: list[Import], known: dict[str, pathlib.Path]) -> list[str]:
    """What breaks a walk: a module that does not exist; one that no earlier module of the walk imports
    (the walk follows real imports: a tower handed down as an argument is imported by whoever builds
    it); a folder entered twice; a folder above the one before it (walks go down the layers)."""
    imported_by: dict[str, set[str]] = {}
    for i in found:
        imported_by.setdefault(i.target, set()).add(i.source)
    errors = [f"{m}: no such module" for m in walk if m not in known]
    for n, m in enumerate(walk[1:], start=1):
        if m in known and not imported_by.get(m, set()) & set(walk[:n]):
            errors.append(f"{m}: imported by no earlier module of the walk")
    folders = [".".join(m.split(".")[:2]) if layer(m) and "." in layer(m)[0] else m.partition(".")[0]
               for m in walk]
    runs = [f for n, f in enumerate(folders) if n == 0 or f != folders[n - 1]]
    errors += [f"{f}: entered twice" for f in sorted({f for f in runs if runs.count(f) > 1})]
    depth = {"vlm_vision": 0, "video": 1, "projector": 1}  # packages: vlm_vision above video, projector
    for a, b in zip(walk, walk[1:]):
        la, lb = layer(a), layer(b)
        if la is None or lb is None:
            continue
        pa, pb = a.partition(".")[0], b.partition(".")[0]
        if (depth[pb], lb[1] if pa == pb else 0) < (depth[pa], la[1] if pa == pb else 0):
            errors.append(f"{a} -> {b}: climbs from {la[0]} to {lb[0]}")
    return errors


# ----- the rules, on our source ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ours() -> list[Import]:
    found = imports(ROOT)
    assert len(found) > 100, f"only {len(found)} imports found: is the parser reading the packages?"
    return found


def test_lower_layers_never_import_upper_ones(ours):
    assert upward(ours) == []


def test_imports_point_down_the_layers_of_each_package(ours):
    assert layer_violations(ROOT, ours) == []


def test_no_import_cycles(ours):
    assert cycles(ours) == []


def test_function_level_imports_say_why():
    assert unexplained_local_imports(ROOT) == []


def test_no_private_names_cross_modules(ours):
    assert private_imports(ours) == []


def test_modules_stay_small():
    assert long_modules(ROOT) == []


def test_every_module_with_logic_has_its_test_file():
    assert untested_modules(ROOT) == []


def test_every_test_file_mirrors_a_module():
    assert stray_tests(ROOT) == []


def test_the_documented_walks_follow_the_layers(ours):
    walks = documented_walks((ROOT / "ARCHITECTURE.md").read_text())
    assert set(walks) == {"extract", "train"}
    assert {name: walk_errors(walk, ours, modules(ROOT)) for name, walk in walks.items()} == \
        {name: [] for name in walks}


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
    # projector.f's import under TYPE_CHECKING counts: a type hint is no licence to climb
    assert upward(found) == ["projector.f:3 imports vlm_vision.b", "video.a:1 imports vlm_vision.b"]
    assert cycles(found) == [["vlm_vision.b", "vlm_vision.c", "vlm_vision.d"]]
    assert unexplained_local_imports(root) == ["vlm_vision.c:2: import vlm_vision.d"]
    assert private_imports(found) == ["vlm_vision.d:1 takes _hidden from vlm_vision.b"]
    assert long_modules(root) == [f"projector.e: {MAX_LINES + 1} lines"]


def _layered_tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """`_tree` with the subpackages of vlm_vision and video's corpus wing."""
    root = _tree(tmp_path, {})
    for sub in (*(f"vlm_vision/{layer}" for layer in LAYERS["vlm_vision"] if layer != "errors"), "video/corpus"):
        (root / sub).mkdir()
        (root / sub / "__init__.py").write_text("")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_layer_check_catches_every_kind_of_climb(tmp_path):
    root = _layered_tree(tmp_path, {
        "vlm_vision/commands/train.py": "from vlm_vision.training import loop\nfrom vlm_vision.errors import Stop\n",
        "vlm_vision/training/loop.py": "from vlm_vision.model.tower import Tower\nfrom . import order\n",
        "vlm_vision/training/order.py": "",
        "vlm_vision/model/tower.py": "class Tower:\n    def f(self):\n"
                                     "        from vlm_vision.data import formats  # lazy: x\n",
        "vlm_vision/data/formats.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from vlm_vision.training.loop import Tower\n",
        "vlm_vision/evaluation/answers.py": "from vlm_vision import Tower\n",
        "vlm_vision/errors.py": "from vlm_vision.model.tower import Tower\nclass Stop(Exception):\n    pass\n",
        "vlm_vision/helpers.py": "",
        "vlm_vision/__init__.py": "from vlm_vision.commands.train import loop\n",  # the public map names anything
        "video/decode.py": "from video.corpus.run import go\n",
        "video/corpus/run.py": "from video import decode\ngo = 1\n",
    })
    assert layer_violations(root, imports(root)) == [
        "video.decode:1 imports video.corpus.run: video.corpus is above video",
        "vlm_vision.data.formats:3 imports vlm_vision.training.loop (under TYPE_CHECKING): "
        "vlm_vision.training is above vlm_vision.data",
        "vlm_vision.errors:1 imports vlm_vision.model.tower: vlm_vision.model is above vlm_vision.errors",
        "vlm_vision.evaluation.answers:1 imports the public map vlm_vision: name the home module",
        "vlm_vision.helpers: in no layer of vlm_vision (LAYERS)",
        "vlm_vision.model.tower:3 imports vlm_vision.data.formats (lazy): "
        "vlm_vision.data is above vlm_vision.model",
    ]


def test_a_cycle_made_only_of_type_hints_is_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "vlm_vision/a.py": "from vlm_vision.b import B\nclass A:\n    pass\n",
        "vlm_vision/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vlm_vision.a import A\n",
    })
    found = imports(root)
    assert [i.typing_only for i in found if i.source == "vlm_vision.b"] == [True]
    assert cycles(found) == [["vlm_vision.a", "vlm_vision.b"]]


def test_mirror_check_catches_untested_modules_stray_tests_and_stale_entries(tmp_path):
    root = _layered_tree(tmp_path, {
        "vlm_vision/model/tower.py": "def f():\n    pass\n",
        "vlm_vision/model/fusion.py": "class Model:\n    pass\n",  # logic, no tests
        "vlm_vision/model/parts.py": "class Parts:\n    pass\n",  # logic, tested elsewhere (listed)
        "vlm_vision/model/consts.py": "WIDTH = 1024\n",  # no logic of its own: no test file needed
        "video/corpus/plan.py": "def plan():\n    pass\n",
        "tests/vlm_vision/model/test_tower.py": "",
        "tests/vlm_vision/model/test_fusion_extra.py": "",  # mirrors nothing
        "tests/vlm_vision/test_package.py": "",  # vlm_vision/__init__.py's tests
        "tests/video/corpus/test_plan.py": "",
        "tests/test_whole.py": "",  # listed as cross-cutting
        "tests/gpu/test_tower_gpu.py": "",  # in a listed folder
    })
    elsewhere = {"vlm_vision.model.parts": "built by the converters", "vlm_vision.model.tower": "stale: has tests",
                 "vlm_vision.model.gone": "stale: no module"}
    assert untested_modules(root, elsewhere) == [
        "vlm_vision.model.fusion: no tests/vlm_vision/model/test_fusion.py",
        "vlm_vision.model.tower: in TESTED_ELSEWHERE but it has its own tests",
        "vlm_vision.model.gone: in TESTED_ELSEWHERE but gone",
    ]
    cross = {"tests/test_whole.py": "the whole", "tests/gpu": "GPU runs", "tests/test_gone.py": "stale"}
    assert stray_tests(root, cross) == ["tests/vlm_vision/model/test_fusion_extra.py",
                                        "tests/test_gone.py: in CROSS_CUTTING but gone"]


def test_walk_check_catches_a_jump_a_second_visit_and_a_climb(tmp_path):
    root = _layered_tree(tmp_path, {
        "vlm_vision/commands/extract.py": "from vlm_vision.model import tower\nfrom video.corpus import run\n",
        "vlm_vision/model/tower.py": "from vlm_vision.model import transforms\n",
        "vlm_vision/model/transforms.py": "",
        "vlm_vision/data/formats.py": "",
        "video/corpus/run.py": "from video import decode\n",
        "video/decode.py": "",
    })
    found, known = imports(root), modules(root)
    good = ["vlm_vision.commands.extract", "vlm_vision.model.tower", "vlm_vision.model.transforms",
            "video.corpus.run", "video.decode"]
    assert walk_errors(good, found, known) == []
    assert walk_errors(["vlm_vision.commands.extract", "vlm_vision.data.formats", "video.nope"], found, known) == [
        "video.nope: no such module", "vlm_vision.data.formats: imported by no earlier module of the walk"]
    back = ["vlm_vision.commands.extract", "vlm_vision.model.tower", "video.corpus.run", "video.decode",
            "vlm_vision.model.transforms"]
    assert walk_errors(back, found, known) == [
        "vlm_vision.model: entered twice",
        "video.decode -> vlm_vision.model.transforms: climbs from video to vlm_vision.model"]
    text = "prose\n```walk extract\nvlm_vision.commands.extract   the command\n\nvideo.decode  frames\n```\nmore\n"
    assert documented_walks(text) == {"extract": ["vlm_vision.commands.extract", "video.decode"]}
