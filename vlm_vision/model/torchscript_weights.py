"""OpenAI's TorchScript CLIP archives, read without running them.

Nothing here unpickles arbitrary objects. Every other weights file goes through `projector.weight_files`
(safetensors, or `torch.load(weights_only=True)`). A TorchScript archive (a zip with `code/` and
`constants.pkl` beside `data.pkl`) cannot go through either: `torch.load` hands it to
`torch.jit.load`, which compiles and runs the Python-like code stored in the archive. We instead
open the zip ourselves and read `data.pkl` with a restricted unpickler (`_TorchScriptUnpickler`)
whose `find_class` accepts only what a TorchScript module tree is made of: the tensor-rebuild
function (replaced by our own `torch.as_strided` over bytes read from the archive's `data/<key>`
record), the typed storage names (mapped to dtypes), `collections.OrderedDict`, TorchScript's
list-building helpers (replaced by `list`), and `__torch__.*` class names, which become inert
records of their attribute dicts. Any other global is refused. The module tree is then flattened
into dotted names (`visual.conv1.weight`, ...), which is exactly the state dict openai/CLIP
rebuilds its models from. No code from the archive is compiled or executed.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from projector.weight_files import StateDict

__all__ = ["is_torchscript", "read_torchscript"]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _ScriptObject:
    """Inert stand-in for an instance of a TorchScript class: it only keeps its attribute dict."""

    qualname = "__torch__"

    def __init__(self, *args):
        raise pickle.UnpicklingError(f"refusing to call {self.qualname}")

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_ignored) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset)


def _script_list(items: Any) -> list:
    return list(items)


def _restore_type_tag(value: Any, _type_str: str) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickler for a TorchScript archive's data.pkl that resolves only tensor-building names."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "device"): torch.device,
        ("torch.jit._pickle", "build_intlist"): _script_list,
        ("torch.jit._pickle", "build_doublelist"): _script_list,
        ("torch.jit._pickle", "build_boollist"): _script_list,
        ("torch.jit._pickle", "build_tensorlist"): _script_list,
        ("torch.jit._pickle", "build_genericlist"): _script_list,
        ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    }

    def __init__(self, file, archive: zipfile.ZipFile, root: str, source: Path):
        super().__init__(file)
        self.archive, self.root, self.source = archive, root, source
        self.storages: dict[str, torch.Tensor] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        raise pickle.UnpicklingError(f"{self.source}: refusing to load global {module}.{name} from a TorchScript "
                                     f"archive (only tensors and module attributes are read)")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self.source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            record = f"{self.root}/data/{key}"
            info = self.archive.getinfo(record)
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if info.file_size != numel * itemsize:
                raise ValueError(f"{self.source}: record {record} has {info.file_size} bytes, "
                                 f"expected {numel} x {itemsize}")
            raw = torch.empty(info.file_size, dtype=torch.uint8)
            with self.archive.open(info) as f:
                if f.readinto(raw.numpy()) != info.file_size:
                    raise ValueError(f"{self.source}: record {record} is truncated")
            self.storages[key] = raw.view(storage_type.dtype)  # (numel,)
        return self.storages[key]


def _archive_root(archive: zipfile.ZipFile, path: Path) -> str:
    roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(roots) != 1:
        raise ValueError(f"{path} is a zip file but not a torch checkpoint: expected one top-level data.pkl, "
                         f"found {len(roots)}")
    return roots[0]


def is_torchscript(path: Path) -> bool:
    """Whether the zip file `path` is a TorchScript archive (code or constants beside its data.pkl)."""
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive, path)
        names = set(archive.namelist())
    return f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names)


def read_torchscript(path: Path) -> StateDict:
    """Tensors of a TorchScript archive by dotted attribute path, without executing the archive."""
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive, path)
        if f"{root}/byteorder" in archive.namelist() and archive.read(f"{root}/byteorder") != b"little":
            raise ValueError(f"{path}: big-endian archives are not supported")
        with archive.open(f"{root}/data.pkl") as f:
            try:
                top = _TorchScriptUnpickler(f, archive, root, path).load()
            except pickle.UnpicklingError as e:
                raise ValueError(str(e)) from e
    if not isinstance(top, _ScriptObject):
        raise ValueError(f"{path}: data.pkl holds a {type(top).__name__}, not a TorchScript module")
    out: StateDict = {}
    _flatten(top, "", out)
    return out


def _flatten(obj: _ScriptObject, prefix: str, out: StateDict) -> None:
    state = getattr(obj, "state", None)
    if not isinstance(state, Mapping):
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{name}.", out)
