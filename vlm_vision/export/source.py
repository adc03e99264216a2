"""What an export reads: the model folder, how its model was fed (`Recipe`), and its run's metrics.

A folder is a vlm-vision trained folder (`final/`, `checkpoint-N/`, a merged model: it holds
`vlm_config.json`), a transformers LLaVA folder (`config.json` of `model_type` llava_next_video,
llava_next or llava), or an original LLaVA / LLaVA-NeXT(-Video) checkpoint folder (LLaVA's own
layout, `vlm_vision.export.llava_own`). The recipe is read from the config alone, so an export is refused for a
setting transformers cannot express before the model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vlm_vision.errors import InputError
from vlm_vision.data.files import Skipped, load_rows
from vlm_vision.data.formats import BadSample, normalise
from vlm_vision.evaluation.model import TRANSFORMERS_KINDS, load_eval_model
from vlm_vision.export.llava_own import is_llava_own, llava_own_config, load_llava_own
from vlm_vision.model.interchange import saved_video_processor
from vlm_vision.model.run_folder import CONFIG_NAME, TrainedSpec, load_trained

__all__ = ["EXPECTED_FOLDER", "Recipe", "load_source", "read_recipe", "run_metrics", "training_images"]

EXPECTED_FOLDER = ("a training run's final/ or checkpoint-N/, a merged model (with vlm_config.json), or a "
                   f"transformers folder of model_type {', '.join(TRANSFORMERS_KINDS)}, or an original LLaVA / "
                   "LLaVA-NeXT(-Video) checkpoint folder")


@dataclass(frozen=True)
class Recipe:
    """The settings a model was trained and fed with, as its folder records them."""

    base_llm: str
    tower: str
    projector_type: str = "mlp2x_gelu"
    select_layer: int = -2
    pool_stride: int = 2
    pool_mode: str = "average"
    video_newline: str = "no_token"
    num_frames: int = 32
    fps: float | None = None
    min_frames: int = 1
    max_frames: int | None = None
    time_instruction: bool = False
    time_markers: bool = False
    faster_token_stride: int | None = None
    max_video_tokens: int | None = None
    image_grid_pinpoints: list[list[int]] | None = None
    anyres_convention: str = "transformers"
    image_mode: str = "crop"
    stage: int | None = None
    train: dict[str, Any] | None = None
    llava_checkpoint: bool = False
    """Read from an original LLaVA checkpoint folder (`<image>`/`<video>` added by the export)."""


def _trained_recipe(run: Path) -> Recipe:
    spec = TrainedSpec.read(run)
    return Recipe(base_llm=spec.resolve(spec.llm, run), tower=spec.resolve(spec.tower, run),
                  projector_type=spec.projector_type, select_layer=spec.select_layer, pool_stride=spec.pool_stride,
                  pool_mode=spec.pool_mode, video_newline=spec.video_newline, num_frames=spec.num_frames,
                  fps=spec.fps, min_frames=spec.min_frames, max_frames=spec.max_frames,
                  time_instruction=spec.time_instruction, time_markers=spec.time_markers,
                  faster_token_stride=spec.faster_token_stride, max_video_tokens=spec.max_video_tokens,
                  image_grid_pinpoints=spec.image_grid_pinpoints, anyres_convention=spec.anyres_convention,
                  stage=spec.stage, train=spec.train)


def _transformers_recipe(run: Path, config: dict[str, Any]) -> Recipe:
    video = saved_video_processor(run)
    text, vision = config.get("text_config", {}), config.get("vision_config", {})
    return Recipe(base_llm=text.get("_name_or_path") or text.get("model_type", "unknown"),
                  tower=vision.get("_name_or_path") or "CLIP (weights in this folder)",
                  projector_type="mlp2x_gelu" if config.get("projector_hidden_act", "gelu") == "gelu" else "other",
                  select_layer=config.get("vision_feature_layer", -2),
                  pool_stride=config.get("spatial_pool_stride", 2), pool_mode=config.get("spatial_pool_mode", "average"),
                  num_frames=video.get("num_frames") or 32, fps=video.get("fps"),
                  image_grid_pinpoints=config.get("image_grid_pinpoints"))


def _llava_own_recipe(run: Path) -> Recipe:
    config = llava_own_config(run)
    aspect, merge = str(config.get("image_aspect_ratio", "")), str(config.get("mm_patch_merge_type", "flat"))
    anyres = aspect.startswith("anyres")
    newline = config.get("mm_newline_position") if merge.startswith("spatial") else None
    return Recipe(base_llm=config.get("_name_or_path") or str(config.get("model_type")),
                  tower=str(config.get("mm_vision_tower")), projector_type=config["mm_projector_type"],
                  select_layer=int(config["mm_vision_select_layer"]),
                  pool_stride=int(config.get("mm_spatial_pool_stride") or 2),
                  pool_mode=config.get("mm_spatial_pool_mode") or "average", video_newline=newline or "no_token",
                  image_grid_pinpoints=config.get("image_grid_pinpoints") if anyres else None,
                  anyres_convention="llava" if anyres else "transformers", llava_checkpoint=True)


def read_recipe(run: Path) -> Recipe:
    """The recipe of a model folder, from its config files only.

    Raises:
        InputError: for a folder that is no model the project reads.
    """
    if (run / CONFIG_NAME).is_file():
        try:
            return _trained_recipe(run)
        except (ValueError, TypeError) as e:
            raise InputError(f"unreadable {CONFIG_NAME}", run / CONFIG_NAME, f"a vlm-vision trained config ({e})") from e
    config_path = run / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if is_llava_own(config):
        return _llava_own_recipe(run)
    if config.get("model_type") not in TRANSFORMERS_KINDS:
        raise InputError("not a model folder the project reads", run, EXPECTED_FOLDER)
    return _transformers_recipe(run, config)


def load_source(run: Path, *, merge: bool) -> tuple[nn.Module, Any]:
    """The model (LoRA merged into the LLM when `merge`) and its processor.

    Raises:
        InputError: when its base LLM, tower or weights cannot be read.
    """
    try:
        if (run / CONFIG_NAME).is_file():
            return load_trained(run, merge=merge)
        if is_llava_own(json.loads((run / "config.json").read_text())):
            return load_llava_own(run, grow=merge)  # merge: the transformers folder, which needs the rows
        return load_eval_model(run)
    except (OSError, ValueError) as e:
        raise InputError("the model could not be loaded", run, f"its base LLM, tower and weights readable ({e})") from e


def run_metrics(run: Path) -> list[dict[str, Any]]:
    """Eval entries the training run logged (`log.jsonl` beside `final/` or `checkpoint-N/`), up to
    the folder's step; [] when there is no log."""
    log = run.parent / "log.jsonl"
    if not (run.name == "final" or run.name.startswith("checkpoint-")) or not log.is_file():
        return []
    last = int(run.name.split("-")[-1]) if run.name.split("-")[-1].isdigit() else None
    entries = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed run
        if any(k.startswith("eval_") for k in entry) and (last is None or entry.get("step", 0) <= last):
            entries.append({k: v for k, v in entry.items() if k == "step" or k.startswith("eval_")})
    return entries


def training_images(recipe: Recipe) -> int | None:
    """The most images one training record held (0: no image records); None when the training data
    cannot be read (moved, or not recorded)."""
    data = (recipe.train or {}).get("data")
    if not data:
        return None
    try:
        rows = load_rows(data)
    except (OSError, ValueError):
        return None
    most = 0
    for n, raw in enumerate(rows.raws):
        if isinstance(raw, Skipped):
            continue
        try:
            record = normalise(raw, n)
        except BadSample:
            continue
        if record["kind"] == "image":
            most = max(most, len(record["media"]))
    return most
