"""Checkpoint layouts -> the tower's own parameter names.

CLIP's vision weights are published in four layouts, and `load_vision_weights` reads them all,
telling them apart by the files and keys it finds rather than by a flag:

  - transformers (`CLIPVisionModel` / `CLIPModel.save_pretrained`, a Hub id in the HF cache):
    `embeddings.patch_embedding.weight`, separate `q_proj/k_proj/v_proj`; transformers 4.x puts a
    `vision_model.` prefix in front, 5.x writes `CLIPVisionModel` keys bare.
  - OpenAI (`visual.conv1.weight`, `visual.transformer.resblocks.N.attn.in_proj_weight`, ...), as
    a plain state dict or as the TorchScript archive openai/CLIP distributes; OpenCLIP's ViT
    checkpoints (`open_clip_pytorch_model.bin`, `open_clip_model.safetensors`) use the same keys.
  - LLaVA: the transformers layout nested under `model.vision_tower.vision_tower.vision_model.`
    (original repos) or `vision_tower.vision_model.` (llava-hf), among the LLM's own weights.

Each layout is a key map plus asserts: every vision key of the source is consumed exactly once
(the pooled-CLS head `ln_post`/`post_layernorm` and `proj` are consumed as "unused"), and every
tensor's shape is checked against the architecture before it is loaded, with the source key in the
error. Where a folder declares its architecture (`config.json`, a LLaVA `mm_vision_tower` name),
that config is used; otherwise the architecture is read off the shapes: width = patch-conv output
channels, patch = its kernel, image side = patch * sqrt(positions - 1), blocks = number of blocks,
MLP width = first MLP's rows, heads = width / 64 (every CLIP ViT uses 64-wide heads).

The activation cannot be read off shapes. OpenAI trained with quick_gelu (x * sigmoid(1.702 x)),
which is what transformers' config defaults to; OpenCLIP's own models default to exact gelu and
record the choice as `quick_gelu` in `open_clip_config.json`. We read that file when it sits
beside the weights; without it, OpenAI-layout weights are assumed to be quick_gelu (a warning
says so for files named `open_clip_*`, whose LAION-trained weights may need gelu).

Nothing here unpickles arbitrary objects. safetensors files are read with `safetensors`; torch
pickles with `torch.load(weights_only=True)`. A TorchScript archive (a zip with `code/` and
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
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionConfig

__all__ = ["find_prefix", "hf_to_tower", "openai_to_tower", "infer_vision_config", "load_vision_weights"]

StateDict = dict[str, torch.Tensor]
KeyFilter = Callable[[str], bool] | None

HEAD_WIDTH = 64  # every released CLIP ViT has 64-wide attention heads
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")
_OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ================================================================================================
# Key maps (pure: state dict in, state dict out)
# ================================================================================================

class _KeyMap:
    """Takes source keys under a prefix, remembering which were used and where each output came from."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], prefix: str):
        self.prefix = prefix
        self.src = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.used: set[str] = set()
        self.out: StateDict = {}
        self.origin: dict[str, str] = {}  # our key -> source key(s), for error messages

    def take(self, key: str) -> torch.Tensor:
        if key not in self.src:
            raise KeyError(f"missing vision key {self.prefix}{key} in the checkpoint")
        self.used.add(key)
        return self.src[key]

    def put(self, ours: str, *keys: str) -> None:
        """Map one source key onto ours, or several stacked along dim 0 (q, k, v -> qkv)."""
        tensors = [self.take(k) for k in keys]
        if len({t.shape for t in tensors}) > 1:
            raise ValueError("cannot fuse keys of different shapes: "
                             + ", ".join(f"{self.prefix}{k} {tuple(t.shape)}" for k, t in zip(keys, tensors)))
        self.out[ours] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)  # (3D, ...)
        self.origin[ours] = " + ".join(self.prefix + k for k in keys)

    def finish(self, ignorable: Iterable[str]) -> None:
        left = sorted(set(self.src) - self.used - set(ignorable))
        if left:
            raise ValueError(f"unconsumed vision keys in the checkpoint (not part of a CLIP ViT this tower knows): "
                             f"{[self.prefix + k for k in left[:8]]}{' ...' if len(left) > 8 else ''}")


def find_prefix(state_dict: Mapping[str, torch.Tensor], anchor: str = "embeddings.patch_embedding.weight") -> str:
    """The key prefix under which a transformers CLIP vision model lives in `state_dict`.

    transformers 4.x writes `vision_model.embeddings...` for both model classes; 5.x writes a bare
    `embeddings...` for `CLIPVisionModel`; LLaVA checkpoints nest it deeper. The patch embedding
    exists once per vision tower, so it anchors the search.

    Raises:
        KeyError: when no key, or more than one, ends with `anchor`.
    """
    hits = [k[: -len(anchor)] for k in state_dict if k.endswith(anchor)]
    if len(hits) != 1:
        raise KeyError(f"expected exactly one key ending in {anchor!r}, found {len(hits)}: {hits[:4]}")
    return hits[0]


def _count_blocks(keys: Iterable[str], head: str, tail: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.fullmatch(re.escape(head) + r"(\d+)\." + re.escape(tail), k))}
    return len(found)


def _map_hf(state_dict: Mapping[str, torch.Tensor], prefix: str | None, num_layers: int | None) -> _KeyMap:
    prefix = find_prefix(state_dict) if prefix is None else prefix
    m = _KeyMap(state_dict, prefix)
    if num_layers is None:
        num_layers = _count_blocks(m.src, "encoder.layers.", "layer_norm1.weight")
    m.put("patch_embed.weight", "embeddings.patch_embedding.weight")
    m.put("cls_token", "embeddings.class_embedding")
    m.put("pos_embed", "embeddings.position_embedding.weight")
    for part in ("weight", "bias"):
        m.put(f"ln_pre.{part}", f"pre_layrnorm.{part}")
    for i in range(num_layers):
        s, d = f"encoder.layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            m.put(d + f"attn.qkv.{part}", *(s + f"self_attn.{p}_proj.{part}" for p in ("q", "k", "v")))
            m.put(d + f"attn.proj.{part}", s + f"self_attn.out_proj.{part}")
            m.put(d + f"ln_1.{part}", s + f"layer_norm1.{part}")
            m.put(d + f"ln_2.{part}", s + f"layer_norm2.{part}")
            m.put(d + f"mlp.fc1.{part}", s + f"mlp.fc1.{part}")
            m.put(d + f"mlp.fc2.{part}", s + f"mlp.fc2.{part}")
    # The pooled-CLS head (post_layernorm) and the non-learned position ids are not part of the features.
    m.finish({"post_layernorm.weight", "post_layernorm.bias", "embeddings.position_ids"})
    return m


def hf_to_tower(state_dict: Mapping[str, torch.Tensor], num_layers: int | None = None, *,
                prefix: str | None = None) -> StateDict:
    """Map transformers' `CLIPVisionModel` keys onto ours (q, k, v fused in that order).

    Args:
        state_dict: a `CLIPVisionModel` (or `CLIPModel`, or LLaVA) state dict; keys outside
            `prefix` are ignored.
        num_layers: blocks in the source model (counted from the keys when None).
        prefix: where the vision model lives in the source (found with `find_prefix` when None).

    Raises:
        KeyError: naming a vision key that is missing from the source.
        ValueError: naming a vision key of the source that the map did not consume.
    """
    return _map_hf(state_dict, prefix, num_layers).out


def _map_openai(state_dict: Mapping[str, torch.Tensor], prefix: str) -> _KeyMap:
    m = _KeyMap(state_dict, prefix)
    m.put("patch_embed.weight", "conv1.weight")
    m.put("cls_token", "class_embedding")
    m.put("pos_embed", "positional_embedding")
    for part in ("weight", "bias"):
        m.put(f"ln_pre.{part}", f"ln_pre.{part}")
    for i in range(_count_blocks(m.src, "transformer.resblocks.", "attn.in_proj_weight")):
        s, d = f"transformer.resblocks.{i}.", f"blocks.{i}."
        m.put(d + "attn.qkv.weight", s + "attn.in_proj_weight")  # q, k, v already stacked: (3D, D)
        m.put(d + "attn.qkv.bias", s + "attn.in_proj_bias")
        for part in ("weight", "bias"):
            m.put(d + f"attn.proj.{part}", s + f"attn.out_proj.{part}")
            m.put(d + f"ln_1.{part}", s + f"ln_1.{part}")
            m.put(d + f"ln_2.{part}", s + f"ln_2.{part}")
            m.put(d + f"mlp.fc1.{part}", s + f"mlp.c_fc.{part}")
            m.put(d + f"mlp.fc2.{part}", s + f"mlp.c_proj.{part}")
    # ln_post and proj turn the CLS output into the contrastive embedding; the features never use them.
    m.finish({"ln_post.weight", "ln_post.bias", "proj"})
    return m


def openai_to_tower(state_dict: Mapping[str, torch.Tensor], *, prefix: str = "visual.") -> StateDict:
    """Map OpenAI/OpenCLIP `visual.*` keys of a CLIP ViT onto ours.

    `attn.in_proj_weight` already stacks q, k, v along dim 0, which is our fused `qkv` layout.

    Args:
        state_dict: an OpenAI or OpenCLIP state dict; keys outside `prefix` (the text tower,
            `logit_scale`) are ignored.
        prefix: where the image tower lives.

    Raises:
        KeyError: naming a vision key that is missing from the source.
        ValueError: naming a vision key of the source that the map did not consume.
    """
    return _map_openai(state_dict, prefix).out


# ================================================================================================
# Architecture: from shapes, or checked against a declared config
# ================================================================================================

def infer_vision_config(tower_state_dict: Mapping[str, torch.Tensor], *, hidden_act: str = "quick_gelu",
                        head_width: int = HEAD_WIDTH, layer_norm_eps: float = 1e-5) -> CLIPVisionConfig:
    """Read a CLIP ViT's architecture off the shapes of its weights (in our layout).

    Args:
        tower_state_dict: weights as `hf_to_tower`/`openai_to_tower` return them.
        hidden_act: the MLP activation (not visible in shapes).
        head_width: attention head width; heads = width / head_width.
        layer_norm_eps: LayerNorm epsilon (not visible in shapes).

    Raises:
        ValueError: if the shapes do not describe a square-patch ViT with a square grid.
    """
    d, c, p_h, p_w = tower_state_dict["patch_embed.weight"].shape  # (D, C, P, P)
    if p_h != p_w:
        raise ValueError(f"patch_embed.weight has a non-square kernel {p_h}x{p_w}")
    n_pos = tower_state_dict["pos_embed"].shape[0]  # 1 + G*G
    g = math.isqrt(n_pos - 1)
    if g * g != n_pos - 1:
        raise ValueError(f"pos_embed has {n_pos} rows, which is not 1 + a square number of patches")
    layers = _count_blocks(tower_state_dict, "blocks.", "attn.qkv.weight")
    mlp = tower_state_dict["blocks.0.mlp.fc1.weight"].shape[0] if layers else 4 * d
    if d % head_width:
        raise ValueError(f"width {d} is not a multiple of the head width {head_width}")
    return CLIPVisionConfig(hidden_size=d, intermediate_size=mlp, num_hidden_layers=layers,
                            num_attention_heads=d // head_width, num_channels=c, image_size=g * p_h,
                            patch_size=p_h, hidden_act=hidden_act, layer_norm_eps=layer_norm_eps)


def _expected_shapes(config: CLIPVisionConfig) -> dict[str, tuple[int, ...]]:
    d, i, p = config.hidden_size, config.intermediate_size, config.patch_size
    n = (config.image_size // p) ** 2
    shapes = {"patch_embed.weight": (d, config.num_channels, p, p), "cls_token": (d,), "pos_embed": (n + 1, d),
              "ln_pre.weight": (d,), "ln_pre.bias": (d,)}
    for b in range(config.num_hidden_layers):
        shapes |= {f"blocks.{b}.attn.qkv.weight": (3 * d, d), f"blocks.{b}.attn.qkv.bias": (3 * d,),
                   f"blocks.{b}.attn.proj.weight": (d, d), f"blocks.{b}.attn.proj.bias": (d,),
                   f"blocks.{b}.ln_1.weight": (d,), f"blocks.{b}.ln_1.bias": (d,),
                   f"blocks.{b}.ln_2.weight": (d,), f"blocks.{b}.ln_2.bias": (d,),
                   f"blocks.{b}.mlp.fc1.weight": (i, d), f"blocks.{b}.mlp.fc1.bias": (i,),
                   f"blocks.{b}.mlp.fc2.weight": (d, i), f"blocks.{b}.mlp.fc2.bias": (d,)}
    return shapes


def _check_against(config: CLIPVisionConfig, m: _KeyMap, source: str) -> None:
    """Every converted tensor has the shape `config` implies; the error names the source key."""
    expected = _expected_shapes(config)
    for k, shape in expected.items():  # embeddings first: the most telling mismatch comes first
        if k in m.out and tuple(m.out[k].shape) != shape:
            raise ValueError(f"{source}: {m.origin[k]} has shape {tuple(m.out[k].shape)}, "
                             f"expected {shape} for this architecture")
    missing = sorted(set(expected) - set(m.out), key=_natural)
    extra = sorted(set(m.out) - set(expected), key=_natural)
    if missing or extra:
        blocks = _count_blocks(m.out, "blocks.", "attn.qkv.weight")
        raise ValueError(f"{source}: the config has {config.num_hidden_layers} blocks, the weights {blocks}; "
                         f"missing {missing[:4]}, extra {[m.origin[k] for k in extra[:4]]}")


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _clip_vision_dict(config: Mapping[str, Any], source: str) -> dict | None:
    """The CLIP vision part of a transformers config.json (CLIP, CLIPVision, llava-hf), if any."""
    if config.get("model_type") == "clip_vision_model":
        return dict(config)
    vision = config.get("vision_config")
    if isinstance(vision, Mapping):
        kind = vision.get("model_type", "clip_vision_model")
        if kind != "clip_vision_model":
            raise ValueError(f"{source}: the vision tower is {kind!r}; this tower implements CLIP ViTs only")
        return dict(vision)
    return None


def _named_tower_config(name: str) -> CLIPVisionConfig | None:
    """Config of a tower named by LLaVA's `mm_vision_tower`, without touching the network."""
    from vlm_vision.configs import HUB_IDS, vision_config

    for variant, hub_id in HUB_IDS.items():
        if name == hub_id:
            return vision_config(variant)
    config_file: str | Path | None = None
    if (Path(name).expanduser() / "config.json").is_file():
        config_file = Path(name).expanduser() / "config.json"
    elif _HUB_ID.match(name):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        config_file = cached if isinstance(cached, str) else None
    if config_file is None:
        return None
    vision = _clip_vision_dict(_read_json(Path(config_file)), str(config_file))
    return None if vision is None else CLIPVisionConfig.from_dict(vision)


# ================================================================================================
# Reading files (the only I/O)
# ================================================================================================

def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _sniff(path: Path) -> str:
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


def _read_safetensors(path: Path, keep: KeyFilter = None) -> StateDict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}


def _read_torch(path: Path, kind: str) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except (pickle.UnpicklingError, RuntimeError) as e:
        raise ValueError(f"cannot read {path} as a torch checkpoint with weights_only=True (we never unpickle "
                         f"code; save the model's state_dict() instead): {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # training checkpoints: {"state_dict": ..., "epoch": ...}
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors (keys: {list(obj)[:8]})")
    return tensors


def _read_file(path: Path, keep: KeyFilter = None) -> StateDict:
    """All (or the `keep`-selected) tensors of one weights file, by name."""
    kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path, keep)
    if kind == "zip" and _is_torchscript(path):
        sd = _read_torchscript(path)
    elif kind in ("zip", "pickle"):
        sd = _read_torch(path, kind)
    else:
        raise ValueError(f"{path} is not a checkpoint: expected a safetensors file, a torch.save file "
                         f"(.pt/.pth/.bin) or a TorchScript archive")
    return sd if keep is None else {k: v for k, v in sd.items() if keep(k)}


def _is_vision_key(key: str) -> bool:
    """Loose filter that keeps every vision key of every layout and skips an LLM's weights."""
    return "vision" in key or "visual" in key or key.startswith(("embeddings.", "encoder.", "pre_layrnorm.",
                                                                  "post_layernorm."))


def _read_folder(folder: Path) -> StateDict:
    """The vision tensors of a folder's weights: HF (sharded or not), OpenCLIP, or a single file."""
    for name in _HF_WEIGHT_FILES + _OPEN_CLIP_WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            weight_map = _read_json(path).get("weight_map")
            if not isinstance(weight_map, Mapping):
                raise ValueError(f"{path} has no 'weight_map'")
            shards = sorted({f for k, f in weight_map.items() if _is_vision_key(k)})
            out: StateDict = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise FileNotFoundError(f"{path.name} lists shard {shard}, which is missing from {folder}")
                out |= _read_file(folder / shard, keep=_is_vision_key)
            return out
        return _read_file(path, keep=_is_vision_key)
    candidates = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if len(candidates) == 1:
        return _read_file(folder / candidates[0], keep=_is_vision_key)
    raise ValueError(f"{folder}: cannot tell which file holds the weights; expected one of "
                     f"{list(_HF_WEIGHT_FILES + _OPEN_CLIP_WEIGHT_FILES)} or a single weights file, "
                     f"found {candidates or 'none'}")


# ----- TorchScript archives, read without running them --------------------------------------------

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


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive, path)
        names = set(archive.namelist())
    return f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names)


def _read_torchscript(path: Path) -> StateDict:
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


# ================================================================================================
# Resolving a name, detecting the layout, and putting it together
# ================================================================================================

def _resolve(name_or_path: str | os.PathLike) -> Path:
    """A local file or folder, or the snapshot folder of a Hub id in the HF cache."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if not _HUB_ID.match(name) or name.endswith(_WEIGHT_SUFFIXES + (".json",)):
        raise FileNotFoundError(f"no such file or folder: {name!r}")
    return _hub_snapshot(name)


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import constants, snapshot_download, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        # Any cached anchor file locates the snapshot folder; no network, no completeness check.
        for anchor in ("config.json", "open_clip_config.json") + _HF_WEIGHT_FILES + _OPEN_CLIP_WEIGHT_FILES:
            cached = try_to_load_from_cache(repo_id, anchor)
            if isinstance(cached, str):
                return Path(cached).parent
        raise FileNotFoundError(f"{repo_id!r} is not a local path, and the Hub model is not in the HF cache at "
                                f"{constants.HF_HUB_CACHE} (HF_HUB_OFFLINE=1, so nothing is downloaded). Download it "
                                f"once with `hf download {repo_id}` while online, or pass a local path")
    # Prefer safetensors; fetch .bin weights only when the repo has no safetensors.
    folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    if not any(p.suffix == ".safetensors" for p in folder.iterdir()):
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.bin", "*.pt", "*.pth"]))
    return folder


def _detect_layout(sd: Mapping[str, torch.Tensor], source: str) -> tuple[str, str]:
    """('openai' | 'hf', prefix) of the single CLIP ViT image tower in `sd`."""
    openai = [k[: -len("class_embedding")] for k in sd
              if (k == "class_embedding" or k.endswith(".class_embedding")) and not k.endswith("embeddings.class_embedding")
              and k[: -len("class_embedding")] + "conv1.weight" in sd]
    resnet = [k for k in sd if k.endswith("attnpool.c_proj.weight")]
    hf = [k[: -len("embeddings.patch_embedding.weight")] for k in sd if k.endswith("embeddings.patch_embedding.weight")]
    if resnet and not openai:
        raise ValueError(f"{source}: this is a ResNet CLIP ({resnet[0]}); the tower implements ViTs only")
    if len(openai) + len(hf) != 1:
        raise ValueError(f"{source}: expected one CLIP ViT image tower, found {len(openai)} in the OpenAI layout "
                         f"{openai[:2]} and {len(hf)} in the transformers layout {hf[:2]}; "
                         f"keys start {sorted(sd)[:6]}")
    return ("openai", openai[0]) if openai else ("hf", hf[0])


def _open_clip_options(folder: Path) -> tuple[dict, dict] | None:
    """(model_cfg, preprocess_cfg) of an `open_clip_config.json` beside the weights, if there is one."""
    path = folder / "open_clip_config.json"
    if not path.is_file():
        return None
    cfg = _read_json(path)
    return cfg.get("model_cfg", {}), cfg.get("preprocess_cfg", {})


def _openai_config(m: _KeyMap, folder: Path, weights: Path, source: str) -> tuple[CLIPVisionConfig, Any]:
    from vlm_vision.transforms import CLIPImageTransform

    options = _open_clip_options(folder)
    if options is None:
        named_open_clip = weights.name.startswith("open_clip") or (
            weights.is_dir() and any((weights / n).is_file() for n in _OPEN_CLIP_WEIGHT_FILES))
        if named_open_clip:
            warnings.warn(f"{source}: no open_clip_config.json beside the weights; assuming quick_gelu (OpenAI-"
                          f"trained). LAION-trained OpenCLIP ViTs use gelu: put their open_clip_config.json beside "
                          f"the file", stacklevel=3)
        return infer_vision_config(m.out, hidden_act="quick_gelu"), None
    model_cfg, preprocess_cfg = options
    vision_cfg = model_cfg.get("vision_cfg", {})
    # OpenCLIP's own default is exact gelu; `quick_gelu: true` marks OpenAI-style models.
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    config = infer_vision_config(m.out, hidden_act=act, head_width=vision_cfg.get("head_width", HEAD_WIDTH))
    transform = None
    if preprocess_cfg:
        interpolation = preprocess_cfg.get("interpolation", "bicubic")
        resize_mode = preprocess_cfg.get("resize_mode", "shortest")
        if interpolation != "bicubic" or resize_mode != "shortest":
            raise ValueError(f"{folder / 'open_clip_config.json'}: preprocessing with interpolation={interpolation!r}, "
                             f"resize_mode={resize_mode!r} is not supported (bicubic, shortest only)")
        transform = CLIPImageTransform(image_size=config.image_size, **{
            k: preprocess_cfg[k] for k in ("mean", "std") if k in preprocess_cfg})
    return config, transform


def _hf_config(m: _KeyMap, folder_config: dict | None, source: str) -> CLIPVisionConfig:
    declared = None
    if folder_config is not None:
        vision = _clip_vision_dict(folder_config, source)
        if vision is not None:
            declared = CLIPVisionConfig.from_dict(vision)
        elif isinstance(folder_config.get("mm_vision_tower"), str):
            declared = _named_tower_config(folder_config["mm_vision_tower"])
    # Without a declared config (e.g. a LLaVA tower named by an uncached id), the shapes decide and
    # OpenAI's quick_gelu is assumed: every CLIP tower LLaVA ships with is OpenAI's.
    return declared if declared is not None else infer_vision_config(m.out, hidden_act="quick_gelu")


def _hf_transform(folder: Path, folder_config: dict | None, config: CLIPVisionConfig) -> Any:
    from vlm_vision.transforms import CLIPImageTransform

    # LLaVA-1.5 pads images to a square of the mean colour when its config says image_aspect_ratio="pad".
    mode = "pad" if folder_config is not None and folder_config.get("image_aspect_ratio") == "pad" else "crop"
    if (folder / "preprocessor_config.json").is_file():
        return CLIPImageTransform.from_processor_config(folder / "preprocessor_config.json", mode=mode)
    return CLIPImageTransform(image_size=config.image_size, mode=mode) if mode == "pad" else None


def load_vision_weights(name_or_path: str | os.PathLike) -> tuple[CLIPVisionConfig, StateDict, Any]:
    """Read a CLIP ViT's vision weights from any supported layout, in the tower's own key names.

    Args:
        name_or_path: a Hub id (from the HF cache; offline once cached), a folder written by
            `CLIPVisionModel`/`CLIPModel.save_pretrained`, an OpenCLIP or LLaVA folder, or one
            weights file: OpenAI TorchScript archive, `.pt`/`.pth`/`.bin` state dict, or
            `.safetensors`. Files beside a weights file (`config.json`, `open_clip_config.json`,
            `preprocessor_config.json`) are read as its metadata.

    Returns:
        (config, state_dict, image_transform): the architecture, every tensor the tower needs
        (shapes checked against the config), and a `CLIPImageTransform` built from the
        checkpoint's preprocessing metadata, or None when it has none (the tower then uses
        CLIP's defaults at the config's image size).

    Raises:
        FileNotFoundError: for a path that does not exist or a Hub id that is not cached offline.
        ValueError: for a file that is not a checkpoint, an unknown layout, a key the map did not
            consume, or a tensor whose shape does not fit (naming the key).
        KeyError: naming a vision key the layout needs but the checkpoint lacks.

    Example:
        >>> config, state_dict, transform = load_vision_weights("openai/clip-vit-large-patch14-336")  # doctest: +SKIP
        >>> state_dict["blocks.0.attn.qkv.weight"].shape  # doctest: +SKIP
        torch.Size([3072, 1024])
    """
    path = _resolve(name_or_path)
    source = str(name_or_path)
    folder = path if path.is_dir() else path.parent
    sd = _read_folder(path) if path.is_dir() else _read_file(path)
    folder_config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    llava_tower = (folder_config or {}).get("mm_vision_tower")
    if isinstance(llava_tower, str) and not any(k.endswith("embeddings.patch_embedding.weight") for k in sd):
        raise ValueError(f"{source}: this LLaVA checkpoint stores no vision tower weights (LLaVA-1.5 keeps the "
                         f"tower frozen and does not save it); load the tower it names, {llava_tower!r}, instead")
    layout, prefix = _detect_layout(sd, source)
    if layout == "openai":
        m = _map_openai(sd, prefix)
        config, transform = _openai_config(m, folder, path, source)
    else:
        m = _map_hf(sd, prefix, None)
        config = _hf_config(m, folder_config, source)
        transform = _hf_transform(folder, folder_config, config)
    _check_against(config, m, source)
    return config, m.out, transform
