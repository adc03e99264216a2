"""Reading an original LLaVA / LLaVA-NeXT(-Video) checkpoint folder (LLaVA's own layout) for export.

LLaVA's tokenizers have no `<image>`/`<video>` tokens (LLaVA splices at id -200). The export adds
both as special tokens and grows the LLM's input (and untied output) embeddings by two rows, set
to the mean of the existing rows: transformers' LLaVA conversion samples them around that mean
(with a 1e-5-scaled covariance); we take the mean itself so that an export is reproducible. The
rows are placeholders replaced by visual features, so their values never reach the LLM's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionConfig

from projector.weight_files import read_json, weight_keys
from vlm_vision.model.configs import hub_config
from vlm_vision.model.fusion import VisionLanguageModel
from vlm_vision.model.llava_checkpoint import LLAVA_DEFAULTS, llava_checkpoint_parts
from vlm_vision.model.processor import VisionLanguageProcessor
from vlm_vision.model.llm import load_tokenizer

__all__ = ["grow_embeddings", "is_llava_own", "llava_own_config", "load_llava_own"]


def is_llava_own(config: dict[str, Any]) -> bool:
    """Whether a `config.json` is LLaVA's own (its `mm_*` keys at the top, no `text_config`)."""
    return "mm_vision_select_layer" in config and "text_config" not in config


def llava_own_config(run: Path) -> dict[str, Any]:
    """The folder's `config.json` with LLaVA's fallbacks for keys it omits."""
    return LLAVA_DEFAULTS | json.loads((run / "config.json").read_text())


def _weight_keys(run: Path) -> list[str]:
    """The tensor names of the folder's weight files (index, safetensors or torch files)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (run / index).is_file():
            return list(read_json(run / index)["weight_map"])
    files = sorted(run.glob("*.safetensors")) + [f for f in sorted(run.glob("*.bin")) if f.name != "mm_projector.bin"]
    return [key for file in files for key in weight_keys(file)]


def _tower_arguments(run: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Where the tower comes from: the folder's weights (config from a known Hub id or a local tower
    folder) or, when the folder holds none (LLaVA-1.5), `mm_vision_tower` itself."""
    tower_id = str(config.get("mm_vision_tower"))
    if not any("vision_tower" in k for k in _weight_keys(run)):
        return {"tower": tower_id}
    if (known := hub_config(tower_id)) is not None:
        return {"vision_config": known}
    if (Path(tower_id) / "config.json").is_file():
        return {"vision_config": CLIPVisionConfig.from_pretrained(tower_id)}
    return {}  # llava_checkpoint_parts names what is missing


def grow_embeddings(llm: Any, size: int) -> None:
    """Grow `llm`'s input (and untied output) embeddings to `size` rows, new rows the mean of the old."""
    old = llm.get_input_embeddings().num_embeddings
    if size <= old:
        return
    llm.resize_token_embeddings(size, mean_resizing=False)
    layers = [llm.get_input_embeddings(), llm.get_output_embeddings()]
    with torch.no_grad():
        for weight in {id(layer.weight): layer.weight for layer in layers if layer is not None}.values():
            weight[old:] = weight[:old].float().mean(dim=0).to(weight.dtype)  # (size - old, hidden)


def load_llava_own(run: Path, *, grow: bool = True) -> tuple[VisionLanguageModel, VisionLanguageProcessor]:
    """The model and a processor whose tokenizer holds `<image>`/`<video>`, the model splicing at them
    (its embeddings grown for them when `grow`; LLaVA's projector file keeps the LLM as it was).

    Raises:
        ValueError, OSError: for settings we cannot reproduce, a missing tower or unreadable weights.
    """
    config = llava_own_config(run)
    parts = llava_checkpoint_parts(run, image_token_id=None, video_token_id=None, **_tower_arguments(run, config))
    model = VisionLanguageModel.from_parts(parts).eval()
    processor = VisionLanguageProcessor.for_model(load_tokenizer(str(run)), model)
    model.image_token_id, model.video_token_id = processor.image_token_id, processor.video_token_id
    if grow:
        grow_embeddings(model.llm, len(processor.tokenizer))
    return model, processor
