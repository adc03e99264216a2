"""The code in the README and the manual (docs/), as the tests that run it read it: the ```python
blocks, the `vlm-vision COMMAND` lines of the ```bash blocks, and the manual's pages in nav order."""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python blocks of a Markdown text, in order (not ``` {.python .interop})."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def interop_blocks(text: str) -> list[str]:
    """The bodies of the ``` {.python .interop} blocks: run with transformers alone, not in our env."""
    return re.findall(r"``` \{\.python \.interop\}\n(.*?)```", text, flags=re.S)


def cli_commands(text: str, command: str) -> list[list[str]]:
    """The arguments of every `vlm-vision COMMAND` line in a text's ```bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["vlm-vision", command]:
                commands.append(words[2:])
    return commands


def nav_pages() -> list[str]:
    """The manual's pages (paths under docs/) in the order of mkdocs.yml's nav."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def flatten(entries: list) -> list[str]:
        pages = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            pages += flatten(value) if isinstance(value, list) else [value]
        return pages

    return flatten(config["nav"])


def run_train_and_export_commands(train: list[list[str]], export: list[list[str]], tmp_path: pathlib.Path) -> None:
    """Run `vlm-vision train` and `vlm-vision export` argument lists as written, in `tmp_path`, on the
    example's data; only the models (tiny random ones, offline) and the step counts are swapped."""
    sys.path.insert(0, str(ROOT / "examples"))
    from train_stage1_stage2 import write_dataset, write_tiny_models

    from vlm_vision.commands.main import main

    llm, tower = write_tiny_models(tmp_path / "models")
    shutil.copy(write_dataset(tmp_path / "media", n=8, frames=32), tmp_path / "train.jsonl")
    swap = {"--llm": llm, "--tower": tower, "--max-steps": "2"}
    for args in train:
        args = [swap.get(prev, word) for prev, word in zip(["", *args], args)]
        assert main(["train", *args]) == 0, args
    for args in export:
        assert main(["export", *args]) == 0, args
