"""Interchange with transformers' LLaVA classes.

transformers holds our model under other names: `LlavaNextVideoForConditionalGeneration` /
`LlavaNextForConditionalGeneration` / `LlavaForConditionalGeneration`. In memory (5.x):
`model.vision_tower.*`, `model.multi_modal_projector.linear_{1,2}.*`, `model.image_newline`,
`model.language_model.*` (the decoder without its head) and `lm_head.weight`. On disk, 4.x wrote
`vision_tower.vision_model.*`, `language_model.model.*` and `language_model.lm_head.weight`; 5.x
writes the same but drops `vision_model.` from the tower. Ours: `tower` (fused q/k/v, only the
blocks up to the feature layer), `projector` (LLaVA's Sequential indices), `llm` (a transformers
causal LM), `image_newline`. (LLaVA's own checkpoint layout is `vlm_vision.model.llava_checkpoint`.)

Every conversion is a key map plus asserts: each source key lands in exactly one part or the
conversion fails naming it, and shapes are checked on load.

Converting from a transformers object shares the LLM's tensors (no copy of the billions of LLM
weights); the tower is rebuilt (q/k/v fused) and the projector copied. Folders are loaded with
transformers' own `from_pretrained` (it reads both the 4.x and 5.x layouts and sharded files),
then converted. The result is a `ModelParts`, which `VisionLanguageModel.from_llava*` assemble.

Saving writes the layout that loads in both 4.x and 5.x (`vision_tower.vision_model.*`,
`language_model.*`). Our tower keeps only the blocks up to its feature layer, so the saved vision
config has that many layers and `vision_feature_layer=-1`: the same features, the same logits,
and no invented weights. (The pooled-CLS `post_layernorm`, which LLaVA never uses, is saved as an
identity LayerNorm so the folder loads without missing keys.)
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import save_torch_state_dict
from torch import nn
from transformers import AutoModelForCausalLM

from projector.builders import build_projector, projector_kind
from projector.checkpoints import load_projector, projector_state_dict
from vlm_vision.model.checkpoint_keys import HF_BLOCK_KEYS, hf_to_tower
from vlm_vision.model.parts import AssembledModel, ModelParts
from vlm_vision.model.tower import CLIPVisionTower
from vlm_vision.model.transforms import CLIPImageTransform

__all__ = ["saved_video_processor", "save_transformers", "split_transformers_keys", "tower_to_hf",
           "transformers_parts"]

# kind -> (transformers config class, model class)
KINDS = {
    "llava_next_video": ("LlavaNextVideoConfig", "LlavaNextVideoForConditionalGeneration"),
    "llava": ("LlavaConfig", "LlavaForConditionalGeneration"),
    "llava_next": ("LlavaNextConfig", "LlavaNextForConditionalGeneration"),
}
_ANYRES_KINDS = ("llava_next", "llava_next_video")  # transformers classes that tile images (anyres)
# transformers' vision_feature_select_strategy <-> our select_feature
_STRATEGY_TO_FEATURE = {"default": "patch", "full": "cls_patch"}
_FEATURE_TO_STRATEGY = {v: k for k, v in _STRATEGY_TO_FEATURE.items()}
_HF_POOL_MODES = ("average", "max")

# Where each part of a transformers LLaVA model lives, in every layout (in memory or on disk, 4.x or 5.x).
# Each pattern's group is the key inside that part. LLM keys get the causal LM's base prefix back.
_TRANSFORMERS_KEYS: list[tuple[str, re.Pattern[str]]] = [
    ("tower", re.compile(r"^(?:model\.)?vision_tower\.(.+)$")),
    ("projector", re.compile(r"^(?:model\.)?(multi_modal_projector\..+)$")),
    ("newline", re.compile(r"^(?:model\.)?(image_newline)$")),
    ("pooler", re.compile(r"^(?:model\.)?vision_resampler\.(.+)$")),
    ("llm", re.compile(r"^language_model\.(.+)$")),  # 4.x memory, 4.x/5.x disk: the whole causal LM
    ("llm_base", re.compile(r"^model\.language_model\.(.+)$")),  # 5.x memory: the decoder alone
    ("llm", re.compile(r"^(lm_head\..+)$")),  # 5.x memory: the head at the top
]


# ----- key maps ------------------------------------------------------------------------------------


def split_transformers_keys(tensors: Mapping[str, torch.Tensor], *, base_prefix: str = "model") -> dict[str, dict]:
    """Sort a transformers LLaVA state dict (any layout) into our parts.

    Args:
        tensors: names -> tensors of a `Llava*ForConditionalGeneration` (parameters and buffers).
        base_prefix: the causal LM's `base_model_prefix` ("model" for Llama, Mistral, Qwen2).

    Returns:
        {"tower": ..., "projector": ..., "newline": ..., "pooler": ..., "llm": ...}, each a dict of
        tensors keyed inside that part (LLM keys as the causal LM names them: `model.layers.0...`).

    Raises:
        ValueError: naming a key that belongs to no part, or two keys that map to one.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in ("tower", "projector", "newline", "pooler", "llm")}
    for key, value in tensors.items():
        for part, pattern in _TRANSFORMERS_KEYS:
            if match := pattern.match(key):
                name = match.group(1)
                if part == "llm_base":
                    part, name = "llm", f"{base_prefix}.{name}"
                if name in parts[part]:
                    raise ValueError(f"two source keys map to {part} key {name!r} (one of them is {key!r})")
                parts[part][name] = value
                break
        else:
            raise ValueError(f"key {key!r} belongs to no part of a LLaVA model (tower, projector, newline, LLM)")
    return parts


def tower_to_hf(tower: CLIPVisionTower) -> dict[str, torch.Tensor]:
    """Our tower's weights under transformers `CLIPVisionModel` names (without `vision_model.`).

    The inverse of `vlm_vision.model.checkpoint_keys.hf_to_tower`: q, k and v are split back out of the fused
    projection (in that order). Tensors are fresh copies.
    """
    src = {k: v.detach() for k, v in tower.state_dict().items()}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return src[key].clone()

    out = {
        "embeddings.patch_embedding.weight": take("patch_embed.weight"),
        "embeddings.class_embedding": take("cls_token"),
        "embeddings.position_embedding.weight": take("pos_embed"),
        "pre_layrnorm.weight": take("ln_pre.weight"),
        "pre_layrnorm.bias": take("ln_pre.bias"),
    }
    for i in range(len(tower.blocks)):
        s, d = f"blocks.{i}.", f"encoder.layers.{i}."
        for part in ("weight", "bias"):
            for name, chunk in zip("qkv", take(s + f"attn.qkv.{part}").chunk(3, dim=0)):  # 3 x (D, ...)
                out[d + f"self_attn.{name}_proj.{part}"] = chunk.clone()
            for ours, theirs in HF_BLOCK_KEYS.items():
                out[d + f"{theirs}.{part}"] = take(s + f"{ours}.{part}")
    assert used == set(src), f"tower keys not mapped: {sorted(set(src) - used)}"
    return out


def _head_key(llm: nn.Module) -> str | None:
    """The state-dict name of the LLM's output head weight (`lm_head.weight`), or None."""
    head = llm.get_output_embeddings()
    return next((f"{name}.weight" for name, m in llm.named_modules() if m is head), None) if head is not None else None


def _assign(module: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Make `module`'s parameters and buffers *be* `tensors` (no copy); every name must be given.

    A tied output head may be absent: it is tied again afterwards.
    """
    own = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))
    tied = bool(getattr(getattr(module, "config", None), "tie_word_embeddings", False))
    head_names = {_head_key(module)} if tied else set()
    missing = sorted(set(own) - set(tensors) - head_names)
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source}: LLM weights do not match {type(module).__name__}; missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    for name, value in tensors.items():
        if name in head_names:
            continue
        if value.shape != own[name].shape:
            raise ValueError(f"{source}: LLM weight {name} has shape {tuple(value.shape)}, "
                             f"expected {tuple(own[name].shape)}")
        parent, _, leaf = name.rpartition(".")
        owner = module.get_submodule(parent)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=own[name].requires_grad)
        else:
            owner._buffers[leaf] = value
    if tied:
        module.tie_weights()
    on_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    assert not on_meta, f"{source}: tensors left unset: {on_meta[:8]}"


# ----- transformers -> ours ---------------------------------------------------------------------------


def _transformers_class(kind: str, which: int) -> Any:
    if kind not in KINDS:
        raise ValueError(f"unknown transformers LLaVA kind {kind!r}; choose from {sorted(KINDS)}")
    return getattr(transformers, KINDS[kind][which])


def _settings(config: Any, kind: str) -> dict[str, Any]:
    """Our constructor settings from a transformers LLaVA config; refuses what we cannot reproduce."""
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer} concatenates several layers; only one layer is supported")
    strategy = config.vision_feature_select_strategy
    if strategy not in _STRATEGY_TO_FEATURE:
        raise ValueError(f"unknown vision_feature_select_strategy {strategy!r}")
    if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
        raise ValueError(f"only the exact-GELU projector with biases (mlp2x_gelu) is supported, got "
                         f"projector_hidden_act={config.projector_hidden_act!r}, "
                         f"multimodal_projector_bias={config.multimodal_projector_bias}")
    settings = {"select_layer": layer, "select_feature": _STRATEGY_TO_FEATURE[strategy],
                "image_token_id": config.image_token_id, "video_token_id": None}
    if kind in _ANYRES_KINDS:
        settings["image_grid_pinpoints"] = config.image_grid_pinpoints
    if kind == "llava_next_video":
        if config.spatial_pool_mode not in _HF_POOL_MODES:
            raise ValueError(f"spatial_pool_mode={config.spatial_pool_mode!r} is not supported; "
                             f"supported: {_HF_POOL_MODES} (every released model uses 'average')")
        settings |= {"video_token_id": config.video_token_id, "pool_stride": config.spatial_pool_stride,
                     "pool_mode": config.spatial_pool_mode}
    return settings


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (persistent or not) by name, tied ones under every name."""
    return dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))


def transformers_parts(model_or_path: Any, *, kind: str, dtype: torch.dtype | None = None) -> ModelParts:
    """Convert a transformers LLaVA model (object or folder) into the parts of a `VisionLanguageModel`.

    Args:
        model_or_path: a `LlavaNextVideoForConditionalGeneration` / `LlavaForConditionalGeneration`,
            or a folder (or Hub id) its `from_pretrained` loads.
        kind: "llava_next_video", "llava_next" (anyres images: `image_grid_pinpoints` is read too)
            or "llava".
        dtype: for a folder, the dtype to load in (the saved one when None).

    Returns:
        The parts, the LLM sharing its tensors with the source object.

    Raises:
        ValueError: for settings we do not reproduce (several feature layers, conv pooling, a
            non-GELU projector) or a key that belongs to no part.
    """
    model_class = _transformers_class(kind, 1)
    source = str(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else type(model_or_path).__name__
    hf = model_class.from_pretrained(model_or_path, dtype=dtype) if isinstance(model_or_path, (str, os.PathLike)) \
        else model_or_path
    config = hf.config
    settings = _settings(config, kind)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(copy.deepcopy(config.text_config))
    parts = split_transformers_keys(_named_tensors(hf), base_prefix=llm.base_model_prefix)
    if parts["pooler"]:
        raise ValueError(f"{source}: the video pooler has weights ({sorted(parts['pooler'])[:4]}); "
                         f"only parameter-free pooling is supported")
    _assign(llm, parts["llm"], source=source)
    if getattr(hf, "generation_config", None) is not None:
        llm.generation_config = copy.deepcopy(hf.generation_config)

    tower = CLIPVisionTower(config.vision_config, select_layer=settings.pop("select_layer"),
                            select_feature=settings.pop("select_feature"), image_transform=_transform_for(model_or_path))
    tower.load_tower_state_dict(hf_to_tower(parts["tower"], config.vision_config.num_hidden_layers), source=source)
    patch = next(v for k, v in parts["tower"].items() if k.endswith("patch_embedding.weight"))
    tower.to(device=patch.device, dtype=patch.dtype)

    projector = build_projector("mlp2x_gelu", config.vision_config.hidden_size, config.text_config.hidden_size)
    load_projector(projector, parts["projector"])
    proj_weight = parts["projector"]["multi_modal_projector.linear_1.weight"]
    projector.to(device=proj_weight.device, dtype=proj_weight.dtype)
    settings["image_newline"] = parts["newline"].get("image_newline")
    return ModelParts(tower, projector, llm, settings)


def saved_video_processor(folder: str | os.PathLike) -> dict[str, Any]:
    """A transformers folder's video processor settings (`num_frames`, `fps`, sizes), from
    transformers 5's nested `processor_config.json` or 4.x's `video_preprocessor_config.json`; {}."""
    nested = Path(folder) / "processor_config.json"
    if nested.is_file():
        return json.loads(nested.read_text()).get("video_processor") or {}
    flat = Path(folder) / "video_preprocessor_config.json"
    return json.loads(flat.read_text()) if flat.is_file() else {}


def _transform_for(model_or_path: Any) -> Any:
    """The folder's own CLIP preprocessing when it ships a processor config (transformers 5's nested
    `processor_config.json`, or 4.x's `preprocessor_config.json`), else the default."""
    if isinstance(model_or_path, (str, os.PathLike)):
        video = saved_video_processor(model_or_path)
        if video:
            return CLIPImageTransform.from_processor_config(video)
        config = Path(model_or_path) / "preprocessor_config.json"
        if config.is_file():
            return CLIPImageTransform.from_processor_config(config)
    return None


# ----- ours -> transformers ---------------------------------------------------------------------------


def _check_saveable(model: AssembledModel, kind: str) -> None:
    if projector_kind(model.projector) != "mlp2x_gelu":
        raise ValueError(f"transformers' LLaVA classes have an mlp2x_gelu projector, this model has "
                         f"{projector_kind(model.projector)}")
    if model.image_token_id is None:
        raise ValueError("transformers' LLaVA configs need an image token id; this model has none")
    if kind == "llava" and model.image_grid_pinpoints is not None:
        raise ValueError("LlavaForConditionalGeneration has one crop per image; this model tiles images (anyres): "
                         "save it with save_llava_next or save_llava_next_video")
    if kind == "llava_next" and model.image_grid_pinpoints is None:
        raise ValueError("LlavaNextForConditionalGeneration tiles images (anyres); this model has no "
                         "image_grid_pinpoints")
    if kind in _ANYRES_KINDS and model.image_grid_pinpoints is not None and model.anyres_convention != "transformers":
        raise ValueError(f"transformers reads pinpoints as [height, width] and rounds when unpadding; this model "
                         f"uses anyres_convention={model.anyres_convention!r}, which transformers cannot express")
    if kind == "llava_next_video":
        if model.video_token_id is None:
            raise ValueError("LlavaNextVideoConfig needs a video token id; this model has none")
        if model.video_newline != "no_token":
            raise ValueError(f"transformers adds no newline tokens to videos; this model uses "
                             f"video_newline={model.video_newline!r}")
        if model.pool_mode not in _HF_POOL_MODES:
            raise ValueError(f"pool_mode={model.pool_mode!r} has no transformers equivalent; use one of {_HF_POOL_MODES}")
        if model.faster_token_stride is not None or model.max_video_tokens is not None:
            raise ValueError(f"transformers pools every frame at one stride; this model uses SlowFast "
                             f"(faster_token_stride={model.faster_token_stride}) or a token budget "
                             f"(max_video_tokens={model.max_video_tokens}), which LlavaNextVideo cannot express")
    if model.llm.base_model_prefix != "model":
        raise ValueError(f"the saved layout assumes an LLM whose decoder is `.model` (Llama, Mistral, Qwen2); "
                         f"{type(model.llm).__name__} uses `.{model.llm.base_model_prefix}`")


def _transformers_config(model: AssembledModel, kind: str) -> Any:
    tower = model.tower
    vision = tower.config.to_dict()
    vision["num_hidden_layers"] = len(tower.blocks)  # only the blocks that feed the features exist
    common = dict(
        vision_config=vision,
        text_config=model.llm.config.to_dict(),
        image_token_index=model.image_token_id,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_select_strategy=_FEATURE_TO_STRATEGY[tower.select_feature],
        vision_feature_layer=-1,
        image_seq_length=tower.num_patches,
        tie_word_embeddings=bool(model.llm.config.tie_word_embeddings),
    )
    if kind == "llava_next_video":
        common |= dict(video_token_index=model.video_token_id, spatial_pool_mode=model.pool_mode,
                       spatial_pool_stride=model.pool_stride)
    if kind in _ANYRES_KINDS and model.image_grid_pinpoints is not None:
        common["image_grid_pinpoints"] = [list(p) for p in model.image_grid_pinpoints]
    config = _transformers_class(kind, 0)(**common)
    config.architectures = [KINDS[kind][1]]
    return config


def save_transformers(model: AssembledModel, path: str | os.PathLike, *, kind: str,
                      max_shard_size: str | int = "5GB") -> Path:
    """Write `model` as a transformers LLaVA folder (config, generation config, safetensors shards).

    Args:
        model: a `VisionLanguageModel` (what is read off it: `vlm_vision.model.parts.AssembledModel`).
        kind: "llava_next_video" (`LlavaNextVideoForConditionalGeneration`), "llava_next"
            (`LlavaNextForConditionalGeneration`, anyres images) or "llava"
            (`LlavaForConditionalGeneration`, one crop per image).
        max_shard_size: largest safetensors shard.

    Raises:
        ValueError: for a model transformers' classes cannot express (projector kind, video
            newlines, pool mode, missing token ids).
    """
    _check_saveable(model, kind)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = _transformers_config(model, kind)
    tensors = {f"vision_tower.vision_model.{k}": v for k, v in tower_to_hf(model.tower).items()}
    width = model.tower.hidden_size
    like = model.tower.ln_pre.weight
    tensors["vision_tower.vision_model.post_layernorm.weight"] = torch.ones(width, dtype=like.dtype)
    tensors["vision_tower.vision_model.post_layernorm.bias"] = torch.zeros(width, dtype=like.dtype)
    tensors |= projector_state_dict(model.projector, "transformers")
    if kind in _ANYRES_KINDS:
        tensors["image_newline"] = model.image_newline.data
    head_key = _head_key(model.llm)
    for key, value in model.llm.state_dict().items():
        if config.tie_word_embeddings and key == head_key:
            continue
        tensors[f"language_model.{key}"] = value
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_torch_state_dict(tensors, path, max_shard_size=max_shard_size, metadata={"format": "pt"})
    config.save_pretrained(path)
    model.llm.generation_config.save_pretrained(path)
    return path
