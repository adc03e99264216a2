"""The folder a training run leaves behind, and the one call that turns it back into a model.

Training changes three small things: the projector, the LoRA adapter on the LLM (stage 2), and the
embedding rows of `<image>`/`<video>` when the tokenizer did not have them. Only those are stored;
the frozen tower and the base LLM are referenced by the name or path they were loaded from, so a
7B run's `final/` weighs megabytes, and reloading is "base weights + these files".

Layout of a trained folder (`final/`, and the model part of every `checkpoint-STEP/`):

    vlm_config.json            what to rebuild: base LLM and tower, projector kind, pooling, token ids,
                               embedding size, LoRA settings, the training config that produced it
    projector.safetensors      LLaVA layout (`model.mm_projector.*`); `projector.load_projector` reads it
    image_newline.safetensors  the learned newline embedding (used by video_newline != "no_token")
    faster_token.safetensors   LLaVA-Video's learned SlowFast token (only when faster_token_stride is set)
    adapter_config.json,       the LoRA adapter in peft's own format (stage 2 only);
    adapter_model.safetensors  `peft.PeftModel.from_pretrained(base_llm, folder)` reads it
    new_tokens.safetensors     rows of the added tokens: `ids`, `input` (and `output` when the LLM's
                               output embedding is not tied to its input embedding)
    tokenizer files            the tokenizer with the placeholder tokens, so ids match on reload

Every folder is written under a temporary name and renamed into place (`video.atomic_files.atomic_dir`): a crash
mid-save leaves the previous folder intact, never half of a new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from projector.builders import build_projector
from projector.checkpoints import load_projector, save_projector
from projector.weight_files import read_weight_file
from video.atomic_files import atomic_dir
from vlm_vision.errors import InputError
from vlm_vision.model.fusion import VisionLanguageModel
from vlm_vision.model.llm import load_llm, load_tokenizer
from vlm_vision.model.processor import VisionLanguageProcessor
from vlm_vision.model.tower import CLIPVisionTower

__all__ = ["CONFIG_NAME", "FASTER_FILE", "NEWLINE_FILE", "NEW_TOKENS_FILE", "PROJECTOR_FILE", "TrainedSpec",
           "absolute_if_local", "build_base", "load_trained", "load_trained_weights", "merge_trained", "save_trained",
           "set_token_rows", "token_rows"]

FORMAT = "vlm-vision/trained/v1"
CONFIG_NAME = "vlm_config.json"
PROJECTOR_FILE = "projector.safetensors"
NEWLINE_FILE = "image_newline.safetensors"
FASTER_FILE = "faster_token.safetensors"
NEW_TOKENS_FILE = "new_tokens.safetensors"


@dataclasses.dataclass
class TrainedSpec:
    """What `vlm_config.json` records: enough to rebuild the model from its base parts."""

    llm: str
    """Base LLM: Hub id, folder, or `.gguf` file; `./name` is relative to the trained folder."""
    tower: str
    """Vision tower: anything `CLIPVisionTower.from_pretrained` reads."""
    projector_type: str
    vocab_size: int
    """Rows of the LLM's embeddings the weights belong to (after adding placeholder tokens)."""
    new_token_ids: list[int]
    """Ids whose embedding rows are stored in `new_tokens.safetensors`."""
    image_token_id: int | None
    video_token_id: int | None
    lora: dict[str, Any] | None = None
    """`r`, `alpha`, `dropout`, `targets` of the adapter; None without one (stage 1, merged)."""
    select_layer: int = -2
    pool_stride: int = 2
    pool_mode: str = "average"
    video_newline: str = "no_token"
    num_frames: int = 32
    image_grid_pinpoints: list[list[int]] | None = None
    """LLaVA-NeXT anyres canvases for images; None: one crop per image."""
    anyres_convention: str = "transformers"
    faster_token_stride: int | None = None
    """SlowFast: every k-th frame pooled at `pool_stride`, the others at twice it (None: off)."""
    max_video_tokens: int | None = None
    """Token budget per video (`video.budget`); None: none."""
    fps: float | None = None
    """Frames per second sampled from a video path (None: `num_frames` uniform frames)."""
    min_frames: int = 1
    max_frames: int | None = None
    time_instruction: bool = False
    """LLaVA-Video's time sentence after each `<video>` (`vlm_vision.model.video_prompt`)."""
    time_markers: bool = False
    """`<t=12.5s>` before each frame's tokens."""
    stage: int = 1
    train: dict[str, Any] | None = None
    """The `TrainConfig` that produced the weights, for the record."""

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "TrainedSpec":
        """Read `folder/vlm_config.json`.

        Raises:
            InputError: when the folder has no config (not a trained folder), or one of another format.
        """
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise InputError("not a trained vlm-vision folder", folder, f"a folder with {CONFIG_NAME} (a run's final/ "
                             f"or checkpoint-STEP/, or a merged model); {CONFIG_NAME} is missing")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError("not JSON", path, f"a {FORMAT} config", hint=str(e)) from None
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise InputError("not a vlm-vision config", path, f"a {FORMAT} config")
        return cls(**data)

    def resolve(self, name: str, folder: Path) -> str:
        """A path stored as `./x` is relative to the trained folder; anything else is used as is."""
        return str(folder / name[2:]) if name.startswith("./") else name


# ----- paths the config records -------------------------------------------------------------------


def absolute_if_local(name_or_path: str) -> str:
    """An existing local path made absolute (so a config stays valid from any working dir)."""
    return str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else name_or_path


# ----- new token rows -----------------------------------------------------------------------------


def _output_embeddings(llm: nn.Module) -> nn.Module | None:
    """The LLM's output embedding when it is a separate tensor from the input embedding, else None."""
    out = llm.get_output_embeddings()
    if out is None or out.weight is llm.get_input_embeddings().weight:
        return None
    return out


def token_rows(llm: nn.Module, ids: list[int],
               whole: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The embedding rows of `ids`: `input` float[n, D] (and `output` when untied), plus `ids`.

    `whole` maps an embedding's weight to its whole tensor when the weights are sharded.
    """
    whole = whole or (lambda weight: weight)
    index = torch.tensor(ids, dtype=torch.long)
    rows = {"ids": index, "input": whole(llm.get_input_embeddings().weight).detach()[index].cpu().contiguous()}
    out = _output_embeddings(llm)
    if out is not None:
        rows["output"] = whole(out.weight).detach()[index].cpu().contiguous()
    return rows


@torch.no_grad()
def set_token_rows(llm: nn.Module, rows: dict[str, torch.Tensor]) -> None:
    """Write rows from `token_rows` back into the LLM's embeddings.

    Raises:
        ValueError: when the LLM's output embedding is tied one way and the rows were saved the other.
    """
    index = rows["ids"].long()
    emb = llm.get_input_embeddings().weight
    emb[index.to(emb.device)] = rows["input"].to(device=emb.device, dtype=emb.dtype)
    out = _output_embeddings(llm)
    if (out is None) != ("output" not in rows):
        raise ValueError("the stored token rows and the LLM disagree on whether input and output embeddings "
                         "are tied; was the same base LLM used?")
    if out is not None:
        out.weight[index.to(out.weight.device)] = rows["output"].to(device=out.weight.device, dtype=out.weight.dtype)


# ----- save and load ------------------------------------------------------------------------------


def save_trained(model: nn.Module, processor: Any, spec: TrainedSpec, folder: str | os.PathLike, *,
                 state: Mapping[str, torch.Tensor] | None = None,
                 rows: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the trained parts of `model` (a `VisionLanguageModel`) into an existing folder.

    Args:
        model: the model, unwrapped (its `.llm` a peft model in stage 2).
        processor: its `VisionLanguageProcessor` (the tokenizer is saved).
        spec: what the config records.
        folder: where to write (use `atomic_dir` around it).
        state: whole tensors by parameter name of the projector, the newline and the adapter, for a
            model whose own parameters are sharded (`vlm_vision.training.sharded.whole_state`);
            default: the model's parameters.
        rows: the added tokens' rows (`token_rows`), when the embeddings are sharded and do not
            train; default: the trained rows (`model.new_token_rows`, from `state` when given), else
            read from the model's embeddings.
    """
    folder = Path(folder)
    tensors = dict(model.named_parameters()) if state is None else state
    projector = {k[len("projector."):]: v for k, v in tensors.items() if k.startswith("projector.")}
    save_projector(model.projector if state is None else _projector_like(model, spec, projector),
                   folder / PROJECTOR_FILE)
    save_file({"image_newline": tensors["image_newline"].detach().cpu().contiguous()}, str(folder / NEWLINE_FILE))
    if model.faster_token is not None:
        save_file({"faster_token": tensors["faster_token"].detach().cpu().contiguous()}, str(folder / FASTER_FILE))
    llm = model.llm
    if spec.lora is not None:
        # The placeholder rows go to new_tokens.safetensors, so peft must not copy whole embeddings.
        adapter = {k[len("llm."):]: v for k, v in tensors.items() if k.startswith("llm.") and "lora_" in k}
        llm.save_pretrained(str(folder), save_embedding_layers=False, state_dict=adapter)
    if spec.new_token_ids:
        trained_rows = getattr(model, "new_token_rows", None)
        if rows is None and trained_rows is not None:  # the rows trained (`NewTokenRows`)
            rows = trained_rows.saved(tensors["new_token_rows.input"], tensors.get("new_token_rows.output"))
        elif rows is None:
            names = {id(p): n for n, p in model.named_parameters()}
            base = llm.get_base_model() if spec.lora is not None else llm
            rows = token_rows(base, spec.new_token_ids, lambda weight: tensors[names[id(weight)]])
        save_file(rows, str(folder / NEW_TOKENS_FILE))
    processor.tokenizer.save_pretrained(str(folder))
    (folder / CONFIG_NAME).write_text(spec.to_json())
    return folder


def _projector_like(model: nn.Module, spec: TrainedSpec, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A projector of the model's kind holding `state` (built on the meta device, so nothing is copied)."""
    with torch.device("meta"):
        projector = build_projector(spec.projector_type, model.tower.hidden_size,
                                    model.llm.get_input_embeddings().embedding_dim)
    projector.load_state_dict(state, assign=True)
    return projector


def build_base(spec: TrainedSpec, *, tokenizer: Any, llm: nn.Module | None = None, tower: nn.Module | None = None,
               dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """Assemble a `VisionLanguageModel` and its processor from the spec's base LLM and tower.

    The processor adds `<image>`/`<video>` to the tokenizer when missing. The LLM's embeddings are
    resized to `spec.vocab_size`, or, for a fresh spec (`vocab_size == 0`), to the tokenizer's size
    when tokens were added (new rows drawn around the old rows' mean, as transformers does). The projector has fresh weights and no adapter is attached.

    Raises:
        ValueError: when the tokenizer's placeholder ids differ from those the spec records.
    """
    llm = load_llm(spec.llm, dtype) if llm is None else llm
    tower = CLIPVisionTower.from_pretrained(spec.tower, select_layer=spec.select_layer, dtype=dtype) \
        if tower is None else tower
    processor = VisionLanguageProcessor(tokenizer, tower.image_transform, num_frames=spec.num_frames,
                                        pool_stride=spec.pool_stride, grid=tower.grid_size,
                                        video_newline=spec.video_newline, image_tokens=tower.num_patches,
                                        image_grid_pinpoints=spec.image_grid_pinpoints,
                                        anyres_convention=spec.anyres_convention, pool_mode=spec.pool_mode,
                                        faster_token_stride=spec.faster_token_stride,
                                        max_video_tokens=spec.max_video_tokens, fps=spec.fps,
                                        min_frames=spec.min_frames, max_frames=spec.max_frames,
                                        time_instruction=spec.time_instruction, time_markers=spec.time_markers)
    ids = (processor.image_token_id, processor.video_token_id)
    if spec.vocab_size and ids != (spec.image_token_id, spec.video_token_id):
        raise ValueError(f"the tokenizer gives placeholder ids (image, video) = {ids}, the trained weights were "
                         f"made for {(spec.image_token_id, spec.video_token_id)}")
    rows = llm.get_input_embeddings().num_embeddings
    if spec.vocab_size and rows != spec.vocab_size:
        llm.resize_token_embeddings(spec.vocab_size, mean_resizing=False)
    elif not spec.vocab_size:
        processor.resize_embeddings(llm)
    projector = build_projector(spec.projector_type, tower.hidden_size, llm.get_input_embeddings().embedding_dim)
    model = VisionLanguageModel(tower, projector, llm, image_token_id=ids[0], video_token_id=ids[1],
                                pool_stride=spec.pool_stride, pool_mode=spec.pool_mode,
                                video_newline=spec.video_newline, image_grid_pinpoints=spec.image_grid_pinpoints,
                                anyres_convention=spec.anyres_convention,
                                faster_token_stride=spec.faster_token_stride, max_video_tokens=spec.max_video_tokens)
    return model, processor


def load_trained_weights(model: nn.Module, folder: str | os.PathLike, spec: TrainedSpec, *,
                         is_trainable: bool = False) -> nn.Module:
    """Load projector, newline, token rows and (when the spec has one) the LoRA adapter into `model`.

    With an adapter, `model.llm` becomes the peft model; returns `model`.
    """
    folder = Path(folder)
    load_projector(model.projector, folder / PROJECTOR_FILE)
    with torch.no_grad():
        model.image_newline.copy_(read_weight_file(folder / NEWLINE_FILE)["image_newline"])
        if model.faster_token is not None:
            if not (folder / FASTER_FILE).is_file():
                raise FileNotFoundError(f"{folder} was trained with SlowFast (faster_token_stride "
                                        f"{spec.faster_token_stride}) but has no {FASTER_FILE}")
            model.faster_token.copy_(read_weight_file(folder / FASTER_FILE)["faster_token"])
    base = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    if spec.new_token_ids:
        rows = read_weight_file(folder / NEW_TOKENS_FILE)
        set_token_rows(base, rows)
        if getattr(model, "new_token_rows", None) is not None:  # training them (resuming a run)
            model.new_token_rows.load(rows)
    if spec.lora is not None:
        from peft import PeftModel, set_peft_model_state_dict  # lazy: peft is heavy and only stage-2 folders need it

        if hasattr(model.llm, "peft_config"):
            # An adapter is already attached (resuming a run): load its weights in place.
            result = set_peft_model_state_dict(model.llm, read_weight_file(folder / "adapter_model.safetensors"))
            if result.unexpected_keys:
                raise ValueError(f"{folder}: adapter weights not in the model: {result.unexpected_keys[:4]}")
        else:
            model.llm = PeftModel.from_pretrained(model.llm, str(folder), is_trainable=is_trainable)
    return model


def load_trained(path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None, merge: bool = False, llm: str | None = None,
                 tower: str | None = None) -> tuple[nn.Module, Any]:
    """Rebuild a trained model from its folder in one call.

    Args:
        path: a `final/` or `checkpoint-STEP/` folder written by `vlm_vision.train`, or a merged export.
        dtype: the model's dtype (default: as loaded).
        device: where the model lives (default: the CPU).
        merge: fold the LoRA adapter into the LLM's weights (`merge_and_unload`).
        llm: read the base LLM from here instead of the folder's record (when it moved).
        tower: read the tower from here instead of the folder's record (when it moved).

    Returns:
        (model, processor): a `VisionLanguageModel` in eval mode and its `VisionLanguageProcessor`.

    Example:
        >>> model, processor = load_trained("runs/stage2/final")
    """
    folder = Path(path)
    spec = TrainedSpec.read(folder)
    spec.llm = spec.resolve(llm or spec.llm, folder)
    spec.tower = spec.resolve(tower or spec.tower, folder)
    tokenizer = load_tokenizer(str(folder))
    model, processor = build_base(spec, tokenizer=tokenizer, dtype=dtype)
    load_trained_weights(model, folder, spec)
    if merge and spec.lora is not None:
        model.llm = model.llm.merge_and_unload()
    return model.to(device=device).eval(), processor


def merge_trained(path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Fold the LoRA adapter into the LLM and write a self-contained vlm-vision folder.

    The output holds the merged LLM (`llm/`, a transformers folder with its tokenizer), the projector,
    the newline and a config pointing at `./llm`; `load_trained(output_dir)` reads it. For a folder
    transformers and vLLM load as they are, use `vlm_vision.export.folder` (`vlm-vision export`).

    Returns:
        The output folder.
    """
    model, processor = load_trained(path, merge=True)
    spec = TrainedSpec.read(path)
    with atomic_dir(output_dir) as tmp:
        model.llm.save_pretrained(str(tmp / "llm"))
        processor.tokenizer.save_pretrained(str(tmp / "llm"))
        processor.tokenizer.save_pretrained(str(tmp))
        save_projector(model.projector, tmp / PROJECTOR_FILE)
        save_file({"image_newline": model.image_newline.detach().cpu().contiguous()}, str(tmp / NEWLINE_FILE))
        if model.faster_token is not None:
            save_file({"faster_token": model.faster_token.detach().cpu().contiguous()}, str(tmp / FASTER_FILE))
        merged = dataclasses.replace(spec, llm="./llm", lora=None, new_token_ids=[],
                                     tower=spec.resolve(spec.tower, Path(path)))
        (tmp / CONFIG_NAME).write_text(merged.to_json())
    return Path(output_dir)
