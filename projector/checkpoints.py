"""Projector weights in the two layouts users hold, mapped onto `build_projector`'s modules.

LLaVA saves the projector under its module path, `model.mm_projector.0.weight` ... (in
`mm_projector.bin` after pre-training, inside the full checkpoint after fine-tuning, and with a
`base_model.model.` prefix in LoRA's `non_lora_trainables.bin`). Because our modules reuse LLaVA's
Sequential indices, everything after `mm_projector.` is already our key.

transformers names the two Linears of its fixed 2-layer MLP `multi_modal_projector.linear_1` and
`linear_2` (under `model.` in 5.x models). Linear i of ours sits at Sequential index 2*(i-1).

Loading is a key map plus asserts: foreign keys (the LLM, the tower) are skipped, and every
projector key must be found exactly once with the right shape, or the error names the key as it
is spelled in the source. Nothing is unpickled beyond tensors (`weights_only=True`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Mapping, Union

import torch
from safetensors.torch import save_file
from torch import nn

from projector.builders import projector_kind
from projector.weight_files import TORCH_SUFFIXES, read_weight_file

__all__ = ["load_projector", "projector_state_dict", "save_projector"]

Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]
Layout = Literal["llava", "transformers"]

_LLAVA_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?mm_projector\.)(?P<key>.+)$")
_HF_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?multi_modal_projector\.)linear_(?P<index>\d+)\.(?P<param>weight|bias)$")


def _source_keys(state_dict: Mapping[str, torch.Tensor], own: set[str], where: str) -> dict[str, str]:
    """Map each of our projector keys to the source key that holds it (the key map)."""
    llava = {k: m for k in state_dict if (m := _LLAVA_KEY.match(k))}
    hf = {k: m for k in state_dict if (m := _HF_KEY.match(k))}
    if llava and hf:
        raise ValueError(f"{where} holds projector keys in both LLaVA and transformers layouts "
                         f"(e.g. {next(iter(llava))!r} and {next(iter(hf))!r}); pass one projector's weights")
    found = llava or hf
    if not found:  # bare layout: the module's own names
        return {k: k for k in state_dict if k in own}
    prefixes = sorted({m.group("prefix") for m in found.values()})
    if len(prefixes) > 1:
        raise ValueError(f"{where} holds more than one projector: key prefixes {prefixes}")
    if llava:
        mapped = {m.group("key"): k for k, m in llava.items()}
    else:
        mapped = {f"{2 * (int(m.group('index')) - 1)}.{m.group('param')}": k for k, m in hf.items()}
    assert len(mapped) == len(found), "two source keys mapped to one projector key"
    return mapped


def _spelled_as(state_dict: Mapping[str, torch.Tensor], key: str) -> str:
    """How our key `key` would be spelled in a source like `state_dict` (for error messages)."""
    for k in state_dict:
        if m := _LLAVA_KEY.match(k):
            return m.group("prefix") + key
        if m := _HF_KEY.match(k):
            index, param = key.split(".")
            return f"{m.group('prefix')}linear_{int(index) // 2 + 1}.{param}"
    return key


def load_projector(module: nn.Module, source: Source) -> nn.Module:
    """Load projector weights in place from a file or a state dict, in LLaVA or transformers layout.

    Args:
        module: a projector from `build_projector` (its kind decides which keys are expected).
        source: a path (`.safetensors`, or `.bin`/`.pt`/`.pth` read with `weights_only=True`; see
            `projector.weight_files`) or a state dict. Keys may be LLaVA's (`model.mm_projector.0.weight`, `mm_projector.0.weight`,
            any prefix before `mm_projector.`), transformers' (`multi_modal_projector.linear_1.weight`,
            also under `model.`) or bare (`0.weight`). Other keys are ignored.

    Returns:
        `module`, with the weights copied in (cast to its dtype, kept on its device).

    Raises:
        ValueError: naming a projector key that is missing, mis-shaped, or that this kind of
            projector does not have (as spelled in the source), or when no projector keys are found.

    Example:
        >>> proj = load_projector(build_projector("mlp2x_gelu", 1024, 4096), "mm_projector.bin")
    """
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"projector weights not found: {source}")
        where, state_dict = str(source), read_weight_file(source)
    else:
        where, state_dict = "the state dict", source
    own = module.state_dict()
    mapped = _source_keys(state_dict, set(own), where)
    if own and not mapped:
        example = sorted(own)[0]
        raise ValueError(f"no projector weights in {where}: expected keys like 'model.mm_projector.{example}', "
                         f"'multi_modal_projector.linear_1.weight' or '{example}'")
    kind = projector_kind(module)
    extra = sorted(mapped[k] for k in set(mapped) - set(own))
    if extra:
        raise ValueError(f"{where} has projector keys {extra} that a {kind} projector does not have; "
                         f"was it trained with another mm_projector_type?")
    missing = sorted(_spelled_as(state_dict, k) for k in set(own) - set(mapped))
    if missing:
        raise ValueError(f"{where} is missing projector keys {missing} needed by a {kind} projector")
    for ours, theirs in mapped.items():
        if state_dict[theirs].shape != own[ours].shape:
            raise ValueError(f"{where}: {theirs} has shape {tuple(state_dict[theirs].shape)}, the {kind} projector "
                             f"expects {tuple(own[ours].shape)}")
    module.load_state_dict({ours: state_dict[theirs] for ours, theirs in mapped.items()}, strict=True)
    return module


def projector_state_dict(module: nn.Module, layout: Layout = "llava") -> dict[str, torch.Tensor]:
    """The projector's weights under the key names of `layout` (detached, on the CPU, contiguous).

    Args:
        module: a projector from `build_projector`.
        layout: `"llava"`: `model.mm_projector.<key>`, as LLaVA's `mm_projector.bin`;
            `"transformers"`: `multi_modal_projector.linear_{1,2}.*` (only for `mlp2x_gelu`, the one
            projector transformers' LLaVA classes have).

    Raises:
        ValueError: for an unknown layout, or a transformers layout of another kind.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if layout == "llava":
        return {f"model.mm_projector.{k}": v for k, v in state.items()}
    if layout != "transformers":
        raise ValueError(f"layout must be 'llava' or 'transformers', got {layout!r}")
    kind = projector_kind(module)
    if kind != "mlp2x_gelu":
        raise ValueError(f"the transformers layout holds only mlp2x_gelu projectors, this one is {kind}")
    out = {}
    for k, v in state.items():
        index, param = k.split(".")
        out[f"multi_modal_projector.linear_{int(index) // 2 + 1}.{param}"] = v  # Sequential 0, 2 -> linear_1, _2
    return out


def save_projector(module: nn.Module, path: str | os.PathLike, layout: Layout = "llava") -> Path:
    """Write projector weights to `path` (format from the suffix: `.safetensors`, or torch for `.bin`/`.pt`).

    Args:
        module: a projector from `build_projector`.
        path: the file to write; parent folders are created.
        layout: `"llava"` writes `model.mm_projector.<key>` as LLaVA's `mm_projector.bin` does;
            `"transformers"` writes `multi_modal_projector.linear_{1,2}.*` (`projector_state_dict`).

    Returns:
        The path written.

    Raises:
        ValueError: for an unknown layout or suffix, or a transformers layout of another kind.
    """
    path = Path(path)
    out = projector_state_dict(module, layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(out, path, metadata={"format": "pt"})
    elif path.suffix in TORCH_SUFFIXES:
        torch.save(out, path)
    else:
        raise ValueError(f"cannot write {path}: use a .safetensors or torch ({', '.join(TORCH_SUFFIXES)}) suffix")
    return path
