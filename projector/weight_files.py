"""Reading weight files: one `.safetensors` / torch file, or the shards a folder's index lists.

This is the one reader of weight files in the project (the projector, the vision tower and the
LLaVA checkpoint converter all call it), kept in the lowest layer that reads weights.

Nothing is unpickled beyond tensors: safetensors files are read with `safetensors` (key by key, so
a key filter loads only the tensors it keeps), torch files with `torch.load(weights_only=True)`.
The format is read off the file's first bytes, not its suffix. (OpenAI's TorchScript archives,
which only a CLIP tower comes in, are read by `vlm_vision.model.torchscript_weights`.)
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

__all__ = ["HF_WEIGHT_FILES", "TORCH_SUFFIXES", "WEIGHT_SUFFIXES", "KeyFilter", "StateDict", "UnsafeWeightsError",
           "read_json", "read_weight_file", "read_weights", "sniff", "weight_keys"]

StateDict = dict[str, torch.Tensor]
KeyFilter = Callable[[str], bool] | None

TORCH_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
# transformers' names for a folder's weights, in the order they are looked for
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


class UnsafeWeightsError(pickle.UnpicklingError, ValueError):
    """A torch file that `weights_only=True` refuses: it pickles objects beyond tensors."""


def read_json(path: Path) -> dict:
    """A JSON file's contents.

    Raises:
        ValueError: naming the file when it is not valid JSON.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def sniff(path: Path) -> str:
    """'zip' (torch.save or TorchScript), 'safetensors', 'pickle' (legacy torch.save) or 'unknown'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol >= 2: torch.save's legacy (pre-1.6) format
        return "pickle"
    return "unknown"


def _read_safetensors(path: Path, keep: KeyFilter) -> StateDict:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}


def _read_torch(path: Path, kind: str) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except (pickle.UnpicklingError, RuntimeError) as e:
        raise UnsafeWeightsError(f"cannot read {path} as a torch checkpoint with weights_only=True (we never "
                                 f"unpickle code; save the model's state_dict() instead): {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # training checkpoints: {"state_dict": ..., "epoch": ...}
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors (keys: {list(obj)[:8]})")
    return tensors


def read_weight_file(path: str | os.PathLike, keep: KeyFilter = None) -> StateDict:
    """All (or the `keep`-selected) tensors of one weights file, by name.

    Args:
        path: a `.safetensors` file or a `torch.save` file (`.bin`, `.pt`, `.pth`; zip or legacy
            pickle); the format is read off the file's first bytes.
        keep: which keys to read (all when None).

    Raises:
        FileNotFoundError: when the file does not exist.
        UnsafeWeightsError: (a ValueError) for a torch file that pickles more than tensors.
        ValueError: for a file of another format, or one that holds no state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    kind = sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path, keep)
    if kind not in ("zip", "pickle"):
        raise ValueError(f"{path} is not a checkpoint: expected a .safetensors file or a torch.save file "
                         f"({', '.join(TORCH_SUFFIXES)}), or for a CLIP tower a TorchScript archive")
    tensors = _read_torch(path, kind)
    return tensors if keep is None else {k: v for k, v in tensors.items() if keep(k)}


def weight_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of one weights file: a safetensors file's header, or a torch file's state dict
    (memory-mapped when it is a zip, so its tensors are not read).

    Raises:
        FileNotFoundError, UnsafeWeightsError, ValueError: as `read_weight_file`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    kind = sniff(path)
    if kind == "safetensors":
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    if kind not in ("zip", "pickle"):
        raise ValueError(f"{path} is not a checkpoint: expected a .safetensors file or a torch.save file "
                         f"({', '.join(TORCH_SUFFIXES)})")
    return list(_read_torch(path, kind))


def _read_shards(index: Path, keep: KeyFilter, read_file: Callable[[Path, KeyFilter], StateDict]) -> StateDict:
    """The tensors of every shard an `*.index.json` lists that holds a kept key."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, Mapping):
        raise ValueError(f"{index} has no 'weight_map'")
    out: StateDict = {}
    for shard in sorted({f for k, f in weight_map.items() if keep is None or keep(k)}):
        if not (index.parent / shard).is_file():
            raise FileNotFoundError(f"{index.name} lists shard {shard}, which is missing from {index.parent}")
        out |= read_file(index.parent / shard, keep)
    return out


def read_weights(path: str | os.PathLike, keep: KeyFilter = None, *, names: tuple[str, ...] = HF_WEIGHT_FILES,
                 read_file: Callable[[Path, KeyFilter], StateDict] = read_weight_file) -> StateDict:
    """The tensors of a weights file, an `*.index.json` of shards, or a folder holding one of `names`.

    Args:
        path: a weights file, a shard index, or a folder (the first of `names` found in it is read).
        keep: which keys to read (all when None); shards holding no kept key are not opened.
        names: the file and index names a folder's weights go by, in order of preference.
        read_file: the reader of one file (`read_weight_file`, or one that knows more formats).

    Raises:
        FileNotFoundError: for a folder holding none of `names`, or a shard the index lists but
            the folder lacks.
        ValueError: as `read_weight_file`, or for an index without a `weight_map`.

    Example:
        >>> weights = read_weights("llava-v1.6-7b", keep=lambda k: "mm_projector" in k)  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        found = next((path / n for n in names if (path / n).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: no {', '.join(n for n in names if not n.endswith('.index.json'))} "
                                    f"or their index")
        path = found
    if path.name.endswith(".index.json"):
        return _read_shards(path, keep, read_file)
    return read_file(path, keep)
