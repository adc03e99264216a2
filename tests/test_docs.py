"""The manual (docs/, built by mkdocs.yml) is executed like code: every page's ```python blocks run,
page by page in nav order, a page's blocks in one namespace of their own; the `vlm-vision train` and
`vlm-vision export` commands of its ```bash blocks run as written with tiny models; the API
reference names every public name at its home module; and `mkdocs build --strict` passes.
(The ``` {.python .interop} block runs in transformers alone: tests/vlm_vision/export/test_interop.py.)"""

from __future__ import annotations

import importlib
import pathlib
import re
import subprocess
import sys

import pytest

from tests.doc_blocks import DOCS, ROOT, cli_commands, interop_blocks, nav_pages, python_blocks, \
    run_train_and_export_commands

PAGES = nav_pages()
# Pages whose examples continue from files another page's examples wrote (the trained tiny model).
NEEDS = {"eval.md": ["training.md"], "report-demo.md": ["training.md", "eval.md"]}
PACKAGES = ("vlm_vision", "video", "projector")


def page_text(page: str) -> str:
    return (DOCS / page).read_text()


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(PAGES) == on_disk


def test_the_docs_hold_the_code_blocks_the_readme_had():
    """16 ```python blocks moved from the README into the manual, and the interop block (1)."""
    counts = {page: len(python_blocks(page_text(page))) for page in PAGES}
    assert sum(counts.values()) >= 16, counts
    assert sum(len(interop_blocks(page_text(page))) for page in PAGES) == 1
    for page, needs in NEEDS.items():
        assert counts[page] and all(counts[n] for n in needs), (page, needs, counts)
        assert all(PAGES.index(n) < PAGES.index(page) for n in needs), (page, needs, PAGES)


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory):
    """Runs pages (and the pages they continue from) once each, in one scratch folder."""
    scratch = tmp_path_factory.mktemp("docs")
    done: set[str] = set()

    def run(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
        for needed in NEEDS.get(page, []):
            run(needed, monkeypatch)
        if page in done:
            return
        monkeypatch.chdir(ROOT)
        monkeypatch.setenv("VLM_VISION_DOCS_TMP", str(scratch))
        namespace: dict = {"__name__": "__docs__"}
        for i, block in enumerate(python_blocks(page_text(page))):
            try:
                exec(compile(block, f"docs/{page} block {i}", "exec"), namespace)
            except Exception as e:  # re-raise with the block that failed, for a readable failure
                raise AssertionError(f"docs/{page} python block {i} failed: {e!r}\n---\n{block}") from e
        done.add(page)

    return run


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(page_text(p))])
def test_page_code_blocks_run(page, docs_run, monkeypatch):
    docs_run(page, monkeypatch)


@pytest.mark.slow
def test_train_and_export_commands_run_with_tiny_models(tmp_path, monkeypatch):
    """The manual's `vlm-vision train` commands (stage 1, stage 2) and `vlm-vision export`, as written
    (default frames, max_length, dtype), on the example's data with tiny models and 2 steps."""
    train = [args for page in PAGES for args in cli_commands(page_text(page), "train")]
    export = [args for page in PAGES for args in cli_commands(page_text(page), "export")]
    assert len(train) >= 2 and export, (train, export)
    monkeypatch.chdir(tmp_path)
    run_train_and_export_commands(train, export, tmp_path)
    assert (tmp_path / "runs/stage2/final/adapter_model.safetensors").exists()
    assert (tmp_path / "runs/export/processor_config.json").exists()


def documented_names() -> set[str]:
    """The dotted names the API pages render (`::: module.Name` lines)."""
    found = set()
    for page in (DOCS / "api").glob("*.md"):
        found |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M))
    return found


def home_of(package: str, name: str) -> str:
    """The module that defines a public name (the lazy `_EXPORTS` map where the package has one)."""
    module = importlib.import_module(package)
    exports = getattr(module, "_EXPORTS", None)
    return exports[name] if exports is not None else getattr(module, name).__module__


@pytest.mark.parametrize("package", PACKAGES)
def test_the_api_reference_names_every_public_name_at_its_home(package):
    module = importlib.import_module(package)
    expected = {f"{home_of(package, name)}.{name}" for name in module.__all__}
    documented = {d for d in documented_names() if d.split(".")[0] == package and d != package}
    assert expected - documented == set(), f"public names of {package} missing from docs/api/{package}.md"
    assert documented - expected == set(), f"docs/api/{package}.md documents names outside {package}.__all__"


def test_mkdocs_build_strict(tmp_path):
    """The manual builds with every warning an error (broken links and anchors, pages outside the nav,
    docstrings mkdocstrings cannot parse); the site goes to a scratch folder, never into the tree."""
    pytest.importorskip("mkdocs", reason="mkdocs comes with the dev extra: pip install -e '.[dev]'")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()
