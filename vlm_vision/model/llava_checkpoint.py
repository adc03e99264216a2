"""Original LLaVA / LLaVA-NeXT(-Video) checkpoint folders (LLaVA's own layout, not transformers').

LLaVA saves the LLM's keys as they are (`model.layers.*`, `lm_head.weight`), the projector as
`model.mm_projector.{0,2}.*`, the tower (when saved at all) under
`model.vision_tower.vision_tower.vision_model.*`, and its settings as `mm_*` config keys. The LLM is
loaded by transformers; projector and tower weights are read from the shards by name and go
through the same key maps as every other layout (`projector.load_projector`,
`vlm_vision.model.checkpoint_keys.hf_to_tower`). The result is a `ModelParts`, which
`VisionLanguageModel.from_llava_checkpoint` assembles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers

from projector.builders import build_projector
from projector.checkpoints import load_projector
from projector.weight_files import read_weights
from vlm_vision.model.checkpoint_keys import hf_to_tower
from vlm_vision.model.configs import hub_config
from vlm_vision.model.parts import ModelParts
from vlm_vision.model.tower import CLIPVisionTower

__all__ = ["LLAVA_DEFAULTS", "LLAVA_LLM_CLASSES", "llava_checkpoint_parts"]

# model_type in LLaVA's config.json -> transformers causal LM class
LLAVA_LLM_CLASSES = {
    "llava": "LlamaForCausalLM",
    "llava_llama": "LlamaForCausalLM",
    "llava_mistral": "MistralForCausalLM",
    "llava_mixtral": "MixtralForCausalLM",
    "llava_qwen": "Qwen2ForCausalLM",
}
# LLaVA's own fallbacks for keys a config may omit (`ModelArguments` / `builder.py`), in one place.
LLAVA_DEFAULTS = {"mm_vision_select_feature": "patch", "mm_projector_type": "linear"}


def _llm_from_llava_config(config: dict[str, Any], llm_class: Any) -> tuple[Any, Any]:
    model_type = config.get("model_type")
    if llm_class is None:
        if model_type not in LLAVA_LLM_CLASSES:
            raise ValueError(f"unknown LLaVA model_type {model_type!r}; pass llm_class= (known: {sorted(LLAVA_LLM_CLASSES)})")
        llm_class = getattr(transformers, LLAVA_LLM_CLASSES[model_type])
    fields = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in ("model_type", "architectures")}
    return llm_class, llm_class.config_class.from_dict(fields)


def _vision_config_for(config: dict[str, Any], vision_config: Any) -> Any:
    if vision_config is not None:
        return vision_config
    hub_id = config.get("mm_vision_tower")
    if (known := hub_config(hub_id)) is None:
        raise ValueError(f"cannot tell the tower's architecture from mm_vision_tower={hub_id!r}; "
                         f"pass vision_config= (a CLIPVisionConfig) or tower=")
    return known


def _video_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Pooling and newline settings the checkpoint's config states (the rest keep our defaults)."""
    if config.get("mm_pooling_position", "before") != "before":
        raise ValueError(f"mm_pooling_position={config['mm_pooling_position']!r}: only pooling before the "
                         f"projector (NeXT-Video v1, transformers) is supported")
    settings = {}
    if "mm_spatial_pool_stride" in config and config["mm_spatial_pool_stride"] is not None:
        settings["pool_stride"] = int(config["mm_spatial_pool_stride"])
    if "mm_spatial_pool_mode" in config and config["mm_spatial_pool_mode"] is not None:
        settings["pool_mode"] = config["mm_spatial_pool_mode"]
    if str(config.get("mm_patch_merge_type", "")).startswith("spatial") and "mm_newline_position" in config:
        settings["video_newline"] = config["mm_newline_position"]
    return settings


def _anyres_settings(config: dict[str, Any]) -> dict[str, Any]:
    """LLaVA-NeXT image tiling from `image_aspect_ratio='anyres'`, read in LLaVA's own convention."""
    aspect = config.get("image_aspect_ratio")
    if not (isinstance(aspect, str) and aspect.startswith("anyres")):
        return {}
    merge = config.get("mm_patch_merge_type", "flat")
    if aspect != "anyres" or merge != "spatial_unpad":
        raise ValueError(f"image_aspect_ratio={aspect!r} with mm_patch_merge_type={merge!r}: only 'anyres' with "
                         f"'spatial_unpad' (LLaVA-NeXT 1.6, NeXT-Video) is supported")
    pinpoints = config.get("image_grid_pinpoints")
    if not isinstance(pinpoints, list) or not all(isinstance(p, list) and len(p) == 2 for p in pinpoints):
        raise ValueError(f"image_grid_pinpoints={pinpoints!r}: expected a list of [width, height] pairs "
                         f"(the '(1x1),...,(6x6)' range form is not supported)")
    return {"image_grid_pinpoints": pinpoints, "anyres_convention": "llava"}


def llava_checkpoint_parts(path: str | os.PathLike, *, image_token_id: int | None, video_token_id: int | None,
                           tower: str | os.PathLike | CLIPVisionTower | None = None, vision_config: Any = None,
                           llm_class: Any = None, dtype: torch.dtype | None = None, **overrides: Any) -> ModelParts:
    """Read an original LLaVA / LLaVA-NeXT-Video checkpoint folder into the parts of a `VisionLanguageModel`.

    The LLM is loaded by transformers from the same folder (it reads `model.layers.*`, `lm_head` and
    skips the rest); projector and tower weights are read from the shards by name. Settings come
    from the config's `mm_vision_select_layer`, `mm_vision_select_feature`, `mm_projector_type`,
    `mm_hidden_size`, `mm_spatial_pool_stride`, `mm_spatial_pool_mode` (and `mm_newline_position`
    for `spatial*` merge types), and anyres image tiling from `image_aspect_ratio='anyres'` with
    `image_grid_pinpoints` (in LLaVA's convention, `anyres_convention='llava'`); `overrides` (e.g. `pool_stride=2`) win over them, as LLaVA's demo
    overrides the config.

    Args:
        image_token_id, video_token_id: placeholder ids. LLaVA's tokenizers have no placeholder
            tokens (LLaVA splices at id -200), so add them with `VisionLanguageProcessor` first,
            pass its ids here, and then call `processor.resize_embeddings(model)`.
        tower: the tower (or its path) when the checkpoint does not hold one (LLaVA-1.5 does not).
        vision_config: the tower's `CLIPVisionConfig` when the checkpoint holds the weights; read
            from `mm_vision_tower` for the OpenAI CLIP ids when None.
        llm_class: the transformers causal LM class; from `model_type` when None.

    Raises:
        ValueError: for settings that cannot be reproduced or a missing tower.
    """
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    for key in ("mm_vision_select_layer",):
        if key not in config:
            raise ValueError(f"{path}/config.json has no {key}; is this a LLaVA checkpoint?")
    config = LLAVA_DEFAULTS | config
    llm_class, llm_config = _llm_from_llava_config(config, llm_class)
    llm = llm_class.from_pretrained(path, config=llm_config, dtype=dtype)
    wanted = lambda k: "mm_projector" in k or "vision_tower" in k or k.endswith("image_newline")  # noqa: E731
    tensors = read_weights(path, wanted)
    select = dict(select_layer=int(config["mm_vision_select_layer"]), select_feature=config["mm_vision_select_feature"])

    if isinstance(tower, CLIPVisionTower):
        pass
    elif tower is not None:
        tower = CLIPVisionTower.from_pretrained(tower, **select)
    else:
        vision = {k: v for k, v in tensors.items() if "vision_tower" in k}
        if not vision:
            raise ValueError(f"{path} holds no vision tower weights; pass tower= (a CLIPVisionTower or its path)")
        tower = CLIPVisionTower(_vision_config_for(config, vision_config), **select)
        tower.load_tower_state_dict(hf_to_tower(vision), source=str(path))
    if "mm_hidden_size" in config and config["mm_hidden_size"] != tower.hidden_size:
        raise ValueError(f"mm_hidden_size={config['mm_hidden_size']} but the tower's width is {tower.hidden_size}")

    projector = build_projector(config["mm_projector_type"], tower.hidden_size, llm.get_input_embeddings().embedding_dim)
    projector_file = path / "mm_projector.bin"
    has_projector = any("mm_projector" in k for k in tensors)
    load_projector(projector, tensors if has_projector or not projector_file.is_file() else projector_file)
    newline = next((v for k, v in tensors.items() if k.endswith("image_newline")), None)
    settings = _video_settings(config) | _anyres_settings(config) | overrides
    weight = llm.get_input_embeddings().weight
    tower.to(device=weight.device, dtype=weight.dtype)
    projector.to(device=weight.device, dtype=weight.dtype)
    return ModelParts(tower, projector, llm, dict(image_token_id=image_token_id, video_token_id=video_token_id,
                                                  image_newline=newline, **settings))
