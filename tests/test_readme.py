"""The README is the landing page: its ```python examples are executed, in order, in one namespace; its
`vlm-vision train` / `export` commands are the manual's, which tests/test_docs.py runs with tiny models;
its links point at pages of the manual that exist; its test command is the one .ci/run runs. (The
manual itself: tests/test_docs.py.)"""

import re

import pytest

from tests.doc_blocks import DOCS, ROOT, cli_commands, nav_pages, python_blocks

README = (ROOT / "README.md").read_text()


def test_readme_has_code_blocks():
    blocks = python_blocks(README)
    assert len(blocks) >= 3, "the README's examples lost their code blocks"


@pytest.mark.slow
def test_readme_code_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("VLM_VISION_DOCS_TMP", str(tmp_path))
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks(README)):
        try:
            exec(compile(block, f"README.md block {i}", "exec"), namespace)
        except Exception as e:  # re-raise with the block that failed, for a readable failure
            raise AssertionError(f"README python block {i} failed: {e!r}\n---\n{block}") from e


@pytest.mark.parametrize("command", ["train", "export"])
def test_readme_commands_are_the_manuals(command):
    """Every `vlm-vision train` / `export` line of the README is, word for word, one the manual's test runs."""
    manual = [args for page in nav_pages() for args in cli_commands((DOCS / page).read_text(), command)]
    for args in cli_commands(README, command):
        assert args in manual, f"README's `vlm-vision {command} {' '.join(args)}` is not in docs/ (tests/test_docs.py)"
    assert command != "train" or len(cli_commands(README, "train")) == 2  # stage 1, stage 2


def test_readme_links_point_at_pages_of_the_manual():
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README)
    assert len(links) >= 15, links
    pages = set(nav_pages())
    for link in links:
        assert (ROOT / link).exists() and link.removeprefix("docs/") in pages, link


def test_the_readme_test_command_is_what_ci_runs():
    """CI (.ci/run) runs the README's test command (the bash line that runs pytest) exactly as written."""
    commands = {line for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S)
                for line in block.splitlines() if "pytest" in line}
    assert len(commands) == 1, commands  # the quick start's and the Development section's are the same line
    assert commands <= set((ROOT / ".ci" / "run").read_text().splitlines()), commands
