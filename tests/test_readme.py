"""The README's API tour is executed: every ```python block, in order, in one namespace."""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_code_blocks():
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3, "the README's API tour lost its code blocks"


@pytest.mark.slow
def test_readme_code_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("VLM_VISION_README_TMP", str(tmp_path))
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks((ROOT / "README.md").read_text())):
        try:
            exec(compile(block, f"README.md block {i}", "exec"), namespace)
        except Exception as e:  # re-raise with the block that failed, for a readable failure
            raise AssertionError(f"README python block {i} failed: {e!r}\n---\n{block}") from e
