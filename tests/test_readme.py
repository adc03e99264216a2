"""The README's API tour is executed: every ```python block, in order, in one namespace; and its
`vlm-vision train` and `vlm-vision export` commands run as written with tiny models. (The
```python interop block runs in transformers alone: tests/vlm_vision/export/test_interop.py.)"""

import os
import pathlib
import re
import shlex
import shutil
import sys

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


def train_commands(text: str, command: str = "train") -> list[list[str]]:
    """The arguments of every `vlm-vision COMMAND` line in the README's bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["vlm-vision", command]:
                commands.append(words[2:])
    return commands


@pytest.mark.slow
def test_readme_train_commands_run_with_tiny_models(tmp_path, monkeypatch):
    """The training section's commands, as written (default frames, max_length, dtype), on the example's
    data; only the models (tiny random ones, offline) and the step counts are swapped."""
    sys.path.insert(0, str(ROOT / "examples"))
    from train_stage1_stage2 import write_dataset, write_tiny_models

    from vlm_vision.commands.main import main

    commands = train_commands((ROOT / "README.md").read_text())
    exports = train_commands((ROOT / "README.md").read_text(), "export")
    assert len(commands) >= 2 and exports, (commands, exports)  # stage 1, stage 2; the export
    llm, tower = write_tiny_models(tmp_path / "models")
    shutil.copy(write_dataset(tmp_path / "media", n=8, frames=32), tmp_path / "train.jsonl")
    swap = {"--llm": llm, "--tower": tower, "--max-steps": "2"}
    monkeypatch.chdir(tmp_path)
    for args in commands:
        args = [swap.get(prev, word) for prev, word in zip(["", *args], args)]
        assert main(["train", *args]) == 0, args
    assert (tmp_path / "runs/stage2/final/adapter_model.safetensors").exists()
    for args in exports:
        assert main(["export", *args]) == 0, args
    assert (tmp_path / "runs/export/processor_config.json").exists()
