"""A CLIP ViT's vision weights from any published layout, in the tower's own key names.

CLIP's vision weights are published in four layouts, and `load_vision_weights` reads them all,
telling them apart by the files and keys it finds rather than by a flag:

  - transformers (`CLIPVisionModel` / `CLIPModel.save_pretrained`, a Hub id in the HF cache):
    `embeddings.patch_embedding.weight`, separate `q_proj/k_proj/v_proj`; transformers 4.x puts a
    `vision_model.` prefix in front, 5.x writes `CLIPVisionModel` keys bare.
  - OpenAI (`visual.conv1.weight`, `visual.transformer.resblocks.N.attn.in_proj_weight`, ...), as
    a plain state dict or as the TorchScript archive openai/CLIP distributes
    (`vlm_vision.model.torchscript_weights`); OpenCLIP's ViT checkpoints (`open_clip_pytorch_model.bin`,
    `open_clip_model.safetensors`) use the same keys.
  - LLaVA: the transformers layout nested under `model.vision_tower.vision_tower.vision_model.`
    (original repos) or `vision_tower.vision_model.` (llava-hf), among the LLM's own weights.

The files are found here (`resolve_weights`: a local file or folder, or a Hub id's snapshot in the
HF cache) and read by `projector.weight_files`; the keys are mapped and the shapes checked by
`vlm_vision.model.checkpoint_keys`. Where a folder declares its
architecture (`config.json`, a LLaVA `mm_vision_tower` name), that config is used; otherwise the
architecture is read off the shapes.

The activation cannot be read off shapes. OpenAI trained with quick_gelu (x * sigmoid(1.702 x)),
which is what transformers' config defaults to; OpenCLIP's own models default to exact gelu and
record the choice as `quick_gelu` in `open_clip_config.json`. We read that file when it sits
beside the weights; without it, OpenAI-layout weights are assumed to be quick_gelu (a warning
says so for files named `open_clip_*`, whose LAION-trained weights may need gelu).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, snapshot_download, try_to_load_from_cache
from transformers import CLIPVisionConfig

from projector.weight_files import (HF_WEIGHT_FILES, WEIGHT_SUFFIXES, KeyFilter, StateDict, read_json,
                                    read_weight_file, read_weights, sniff)
from vlm_vision.model.checkpoint_keys import (HEAD_WIDTH, KeyMap, check_shapes, hf_key_map, infer_vision_config,
                                        openai_key_map)
from vlm_vision.model.configs import hub_config
from vlm_vision.model.torchscript_weights import is_torchscript, read_torchscript
from vlm_vision.model.transforms import CLIPImageTransform

__all__ = ["HUB_ID", "OPEN_CLIP_WEIGHT_FILES", "cached_hub_file", "load_vision_weights", "resolve_weights"]


# ----- where the files are -------------------------------------------------------------------------

# A name that exists on disk is used as is. Anything else that looks like `org/name` is a Hub id:
# with `HF_HUB_OFFLINE=1` its cached snapshot folder is found without touching the network (any
# cached anchor file locates it), otherwise the snapshot is downloaded (safetensors preferred).

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A local file or folder, or the snapshot folder of a Hub id in the HF cache.

    Raises:
        FileNotFoundError: for a path that does not exist, or a Hub id that is not cached offline.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if not HUB_ID.match(name) or name.endswith(WEIGHT_SUFFIXES + (".json",)):
        raise FileNotFoundError(f"no such file or folder: {name!r}")
    return _hub_snapshot(name)


def cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """The cached copy of one file of a Hub repo, or None (never downloads)."""
    cached = try_to_load_from_cache(repo_id, filename)
    return Path(cached) if isinstance(cached, str) else None


def _hub_snapshot(repo_id: str) -> Path:
    if constants.HF_HUB_OFFLINE:
        # Any cached anchor file locates the snapshot folder; no network, no completeness check.
        for anchor in ("config.json", "open_clip_config.json") + HF_WEIGHT_FILES + OPEN_CLIP_WEIGHT_FILES:
            cached = cached_hub_file(repo_id, anchor)
            if cached is not None:
                return cached.parent
        raise FileNotFoundError(f"{repo_id!r} is not a local path, and the Hub model is not in the HF cache at "
                                f"{constants.HF_HUB_CACHE} (HF_HUB_OFFLINE=1, so nothing is downloaded). Download it "
                                f"once with `hf download {repo_id}` while online, or pass a local path")
    # Prefer safetensors; fetch .bin weights only when the repo has no safetensors.
    folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    if not any(p.suffix == ".safetensors" for p in folder.iterdir()):
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.bin", "*.pt", "*.pth"]))
    return folder


# ----- reading the files ----------------------------------------------------------------------------


def _is_vision_key(key: str) -> bool:
    """Loose filter that keeps every vision key of every layout and skips an LLM's weights."""
    return "vision" in key or "visual" in key or key.startswith(("embeddings.", "encoder.", "pre_layrnorm.",
                                                                  "post_layernorm."))


def _read_file(path: Path, keep: KeyFilter = None) -> StateDict:
    """One weights file: a TorchScript archive here, any other through `projector.weight_files`."""
    if sniff(path) == "zip" and is_torchscript(path):
        sd = read_torchscript(path)
        return sd if keep is None else {k: v for k, v in sd.items() if keep(k)}
    return read_weight_file(path, keep)


def _read_folder(folder: Path) -> StateDict:
    """The vision tensors of a folder's weights: HF (sharded or not), OpenCLIP, or a single file."""
    names = HF_WEIGHT_FILES + OPEN_CLIP_WEIGHT_FILES
    if any((folder / name).is_file() for name in names):
        return read_weights(folder, _is_vision_key, names=names, read_file=_read_file)
    candidates = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if len(candidates) == 1:
        return _read_file(folder / candidates[0], keep=_is_vision_key)
    raise ValueError(f"{folder}: cannot tell which file holds the weights; expected one of "
                     f"{list(names)} or a single weights file, found {candidates or 'none'}")


# ----- the layout and the architecture --------------------------------------------------------------


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
    if (known := hub_config(name)) is not None:
        return known
    config_file: str | Path | None = None
    if (Path(name).expanduser() / "config.json").is_file():
        config_file = Path(name).expanduser() / "config.json"
    elif HUB_ID.match(name):
        config_file = cached_hub_file(name, "config.json")
    if config_file is None:
        return None
    vision = _clip_vision_dict(read_json(Path(config_file)), str(config_file))
    return None if vision is None else CLIPVisionConfig.from_dict(vision)


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
    cfg = read_json(path)
    return cfg.get("model_cfg", {}), cfg.get("preprocess_cfg", {})


def _openai_config(m: KeyMap, folder: Path, weights: Path, source: str) -> tuple[CLIPVisionConfig, Any]:
    options = _open_clip_options(folder)
    if options is None:
        named_open_clip = weights.name.startswith("open_clip") or (
            weights.is_dir() and any((weights / n).is_file() for n in OPEN_CLIP_WEIGHT_FILES))
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


def _hf_config(m: KeyMap, folder_config: dict | None, source: str) -> CLIPVisionConfig:
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
    path = resolve_weights(name_or_path)
    source = str(name_or_path)
    folder = path if path.is_dir() else path.parent
    sd = _read_folder(path) if path.is_dir() else _read_file(path)
    folder_config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    llava_tower = (folder_config or {}).get("mm_vision_tower")
    if isinstance(llava_tower, str) and not any(k.endswith("embeddings.patch_embedding.weight") for k in sd):
        raise ValueError(f"{source}: this LLaVA checkpoint stores no vision tower weights (LLaVA-1.5 keeps the "
                         f"tower frozen and does not save it); load the tower it names, {llava_tower!r}, instead")
    layout, prefix = _detect_layout(sd, source)
    if layout == "openai":
        m = openai_key_map(sd, prefix)
        config, transform = _openai_config(m, folder, path, source)
    else:
        m = hf_key_map(sd, prefix, None)
        config = _hf_config(m, folder_config, source)
        transform = _hf_transform(folder, folder_config, config)
    check_shapes(config, m, source)
    return config, m.out, transform
