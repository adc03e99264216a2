"""`vlm-vision export`: a trained model as a folder that transformers and vLLM load as they are.

Two formats:

- `llava-next-video` (default): a complete transformers folder. The LoRA is merged into the LLM
  and everything is written as `LlavaNextVideoForConditionalGeneration` weights (safetensors
  shards), `config.json`, `generation_config.json`, the tokenizer with `<image>`/`<video>`, a chat
  template that renders typed parts into the prompt training used, the image and video processor
  files (`vlm_vision.export.files`) and a model card (`vlm_vision.export.model_card`).
- `llava-projector`: the projector alone as LLaVA's stage-1 file, `mm_projector.bin`
  (`model.mm_projector.*`, what LLaVA-NeXT's `--pretrain_mm_mlp_adapter` takes), a safetensors
  copy, and a `config.json` of the LLM's config with LLaVA's `mm_*` keys.

What transformers' classes cannot express is refused before anything is written, naming the
setting. The folder is written under a temporary name and renamed into place
(`video.atomic_files.atomic_dir`): an existing `--out` is refused without `overwrite`, and a failed
export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from projector.builders import projector_kind
from projector.checkpoints import projector_state_dict
from video.atomic_files import atomic_dir
from vlm_vision.errors import InputError
from vlm_vision.export.files import (
    FORMATS,
    ProcessorSettings,
    as_typed,
    processor_files,
    sample_conversations,
    typed_parts_template,
)
from vlm_vision.export.source import EXPECTED_FOLDER, Recipe, load_source, read_recipe, run_metrics, training_images
from vlm_vision.export.model_card import CardFacts, model_card
from vlm_vision.model.video_prompt import time_instruction

__all__ = ["MIN_TRANSFORMERS", "ExportSettings", "export_model", "refuse_inexpressible"]

MIN_TRANSFORMERS = {5: "5.0", 4: "4.52"}
"""Oldest transformers that reads the processor layout written for each major version (5: one
nested `processor_config.json`; 4: separate image and video processor files)."""
_LLAVA_MODEL_TYPES = {  # the LLM's model_type -> LLaVA's model_type and class for it
    "llama": ("llava_llama", "LlavaLlamaForCausalLM"),
    "mistral": ("llava_mistral", "LlavaMistralForCausalLM"),
    "mixtral": ("llava_mixtral", "LlavaMixtralForCausalLM"),
    "qwen2": ("llava_qwen", "LlavaQwenForCausalLM"),
}


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """One export: where from, where to, which format."""

    run: str
    """A training run's `final/` or `checkpoint-N/`, a merged model, a transformers LLaVA folder, or an
    original LLaVA / LLaVA-NeXT(-Video) checkpoint folder."""
    out: str
    format: str = "llava-next-video"
    overwrite: bool = False
    max_shard_size: str = "5GB"
    """Largest safetensors shard of the transformers folder."""


# ----- what transformers cannot express -----------------------------------------------------------


def refuse_inexpressible(recipe: Recipe, source: str) -> None:
    """Raise `InputError` naming the first setting transformers' LLaVA-NeXT-Video cannot express."""
    checks = [
        (recipe.faster_token_stride is not None, f"faster_token_stride={recipe.faster_token_stride}",
         "SlowFast tokens (every k-th frame at another stride) have no transformers equivalent"),
        (recipe.time_markers, "time_markers=True",
         "<t=..s> markers between frames have no place in transformers' video token run"),
        (recipe.video_newline != "no_token", f"video_newline={recipe.video_newline!r}",
         "transformers adds no newline tokens to videos (the 'grid' and other newline layouts)"),
        (recipe.max_video_tokens is not None, f"max_video_tokens={recipe.max_video_tokens}",
         "per-video budgets change the pooling per video; transformers pools every video at one stride"),
        (recipe.pool_stride != 2, f"pool_stride={recipe.pool_stride}",
         "transformers' LlavaNextVideoProcessor counts a frame's tokens as its patches / 4 (stride 2 only)"),
        (recipe.pool_mode not in ("average", "max"), f"pool_mode={recipe.pool_mode!r}",
         "transformers pools with 'average' or 'max'"),
        (recipe.projector_type != "mlp2x_gelu", f"projector_type={recipe.projector_type!r}",
         "transformers' LLaVA classes have the mlp2x_gelu projector"),
        (recipe.image_grid_pinpoints is not None and recipe.anyres_convention != "transformers",
         f"anyres_convention={recipe.anyres_convention!r}",
         "transformers tiles images in its own convention ([height, width], rounded unpadding)"),
        (recipe.image_mode != "crop", f"image mode {recipe.image_mode!r}",
         "transformers' processors resize the shortest edge and centre-crop"),
    ]
    for failed, setting, why in checks:
        if failed:
            raise InputError(f"cannot export {setting} to llava-next-video", source, why)


# ----- the transformers folder -----------------------------------------------------------------------


def _wrapped_template(tokenizer: Any, recipe: Recipe, source: str) -> str:
    """The typed-parts chat template, checked to render training's prompts exactly (with the time
    sentence training put after `<video>`, when it did)."""
    base = getattr(tokenizer, "chat_template", None)
    if not isinstance(base, str) or not base:
        raise InputError("the tokenizer has no chat template", source, "a tokenizer with a chat_template")
    wrapped = typed_parts_template(base, time_instruction=recipe.time_instruction)
    duration, times = 2.5, [0.0, 0.125, 2.4]
    for conversation in sample_conversations():
        typed = as_typed(conversation)
        if recipe.time_instruction:  # training's `prompt_messages`: the sentence after the first <video>
            sentence = time_instruction(duration, times)
            conversation = [{**m, "content": m["content"].replace("<video>", f"<video>\n{sentence}", 1)}
                            for m in conversation]
            typed = [{**m, "content": [{**p, "duration": duration, "frame_times": times} if p["type"] == "video"
                                       else p for p in m["content"]]} for m in typed]
        expected = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        for messages in ((typed,) if recipe.time_instruction else (conversation, typed)):
            got = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                chat_template=wrapped)
            if got != expected:
                raise InputError("the chat template cannot be wrapped to take typed parts", source,
                                 f"the same prompt with typed parts; got {got[-60:]!r} for {expected[-60:]!r}")
    return wrapped


def _processor_settings(model: Any, recipe: Recipe, template: str) -> ProcessorSettings:
    transform, tower = model.tower.image_transform, model.tower
    return ProcessorSettings(
        image_size=transform.image_size, mean=tuple(transform.mean), std=tuple(transform.std),
        patch_size=transform.image_size // tower.grid_size[0],
        select_strategy="default" if tower.select_feature == "patch" else "full",
        image_grid_pinpoints=recipe.image_grid_pinpoints, num_frames=recipe.num_frames if recipe.fps is None else None,
        fps=recipe.fps, chat_template=template)


def _card(model: Any, processor: Any, recipe: Recipe, settings: ExportSettings, proc: ProcessorSettings,
          warnings: list[str]) -> str:
    major = int(installed("transformers").split(".")[0])
    example = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens in this video?"}]}])
    grid = model.tower.grid_size
    return model_card(CardFacts(
        name=Path(settings.out).name, source=str(settings.run), llava_checkpoint=recipe.llava_checkpoint, base_llm=recipe.base_llm, tower=recipe.tower,
        image_size=proc.image_size, patch_size=proc.patch_size, select_layer=recipe.select_layer,
        select_strategy=proc.select_strategy, projector=projector_kind(model.projector), pool_stride=model.pool_stride,
        pool_mode=model.pool_mode, tokens_per_frame=(grid[0] // model.pool_stride) * (grid[1] // model.pool_stride),
        num_frames=recipe.num_frames, fps=recipe.fps, min_frames=recipe.min_frames, max_frames=recipe.max_frames,
        time_instruction=recipe.time_instruction, image_grid_pinpoints=recipe.image_grid_pinpoints,
        transformers_version=installed("transformers"), min_transformers=MIN_TRANSFORMERS[min(major, 5)],
        example_prompt=example, stage=recipe.stage, train=recipe.train, metrics=run_metrics(Path(settings.run)),
        warnings=warnings))


def _image_warnings(recipe: Recipe, source: str) -> list[str]:
    """Refuse multi-image training at base resolution; note what a video-only export means for images."""
    if recipe.image_grid_pinpoints is not None:
        return []
    images = training_images(recipe)
    if images is None:
        return ["The training data could not be read to check for image records. This model takes one crop per "
                "image, but transformers' LlavaNextVideo tiles every image (anyres): give it videos."]
    if images > 1:
        raise InputError("cannot export multi-image records at base resolution to llava-next-video", source,
                         "transformers would tile each image (anyres); this model saw several one-crop images per "
                         "record")
    if images == 1:
        return ["This model was trained on images at base resolution (one crop each); transformers' LlavaNextVideo "
                "tiles every image (anyres), so image prompts differ from training. Videos are exact."]
    return ["Images: not trained on images. transformers' LlavaNextVideo would tile them (anyres)."]


def _write_llava_next_video(model: Any, processor: Any, recipe: Recipe, settings: ExportSettings,
                            folder: Path, warnings: list[str]) -> None:
    source = str(settings.run)
    tokenizer = processor.tokenizer
    template = _wrapped_template(tokenizer, recipe, source)
    try:
        model.save_llava_next_video(folder, max_shard_size=settings.max_shard_size)
    except ValueError as e:  # what `save_transformers` refuses, the setting named in its message
        raise InputError("cannot export to llava-next-video", source, str(e)) from e
    tokenizer.chat_template = template
    tokenizer.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["processor_class"] = "LlavaNextVideoProcessor"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    proc = _processor_settings(model, recipe, template)
    major = int(installed("transformers").split(".")[0])
    for name, text in processor_files(proc, major).items():
        (folder / name).write_text(text)
    (folder / "README.md").write_text(_card(model, processor, recipe, settings, proc, warnings))


# ----- LLaVA's projector file ----------------------------------------------------------------------


def _write_llava_projector(model: Any, recipe: Recipe, folder: Path) -> None:
    state = projector_state_dict(model.projector, "llava")  # model.mm_projector.<index>.<param>
    torch.save(state, folder / "mm_projector.bin")
    save_file(state, str(folder / "mm_projector.safetensors"), metadata={"format": "pt"})
    config = model.llm.config.to_dict()
    model_type, architecture = _LLAVA_MODEL_TYPES.get(config.get("model_type"), (config.get("model_type"), None))
    config.update(model_type=model_type, mm_projector_type=projector_kind(model.projector),
                  mm_hidden_size=model.tower.hidden_size, mm_vision_tower=recipe.tower,
                  mm_vision_select_layer=recipe.select_layer,
                  mm_vision_select_feature=model.tower.select_feature, mm_spatial_pool_stride=model.pool_stride,
                  mm_spatial_pool_mode=model.pool_mode, tune_mm_mlp_adapter=True)
    if architecture:
        config["architectures"] = [architecture]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


# ----- the command's work ----------------------------------------------------------------------------


def _check_paths(settings: ExportSettings) -> tuple[Path, Path]:
    run, out = Path(settings.run).resolve(), Path(settings.out).resolve()
    if settings.format not in FORMATS:
        raise InputError("unknown export format", settings.format, f"one of {', '.join(FORMATS)}")
    if not run.is_dir():
        raise InputError("no such model folder", settings.run, EXPECTED_FOLDER)
    if out == run or run in out.parents or out in run.parents:
        raise InputError("the output folder overlaps the model folder", settings.out,
                         f"a folder outside {settings.run} (and not one that holds it)")
    if out.exists() and not settings.overwrite:
        raise InputError("the output folder exists", settings.out, "a new folder, or --overwrite to replace it")
    return run, out


def export_model(settings: ExportSettings) -> Path:
    """Write the export `settings` asks for; returns the folder.

    Raises:
        InputError: for a folder that is not a model we read, an existing output without
            `overwrite`, or a setting the format cannot express (named).
    """
    run, out = _check_paths(settings)
    source = str(settings.run)
    recipe = read_recipe(run)
    warnings: list[str] = []
    if settings.format == "llava-next-video":
        refuse_inexpressible(recipe, source)
        warnings = _image_warnings(recipe, source)
    model, processor = load_source(run, merge=settings.format == "llava-next-video")
    if settings.format == "llava-next-video":
        refuse_inexpressible(dataclasses.replace(recipe, image_mode=model.tower.image_transform.mode), source)
    with atomic_dir(out) as tmp:
        if settings.format == "llava-projector":
            _write_llava_projector(model, recipe, tmp)
        else:
            _write_llava_next_video(model, processor, recipe, settings, tmp, warnings)
    return out

