"""The model under evaluation: which folder kinds we can evaluate, their identity, loading them.

A prediction file is only ever extended with predictions of the same model: `model_identity`
fingerprints a folder (name, size, first and last 64 KiB of each config and weight file), cheap
enough for large models and changed by retrained or replaced weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_vision.errors import InputError
from vlm_vision.model.fusion import VisionLanguageModel
from vlm_vision.model.interchange import saved_video_processor
from vlm_vision.model.processor import VisionLanguageProcessor
from vlm_vision.model.run_folder import CONFIG_NAME, load_trained
from vlm_vision.model.llm import load_tokenizer

__all__ = ["TRANSFORMERS_KINDS", "load_eval_model", "model_identity"]

TRANSFORMERS_KINDS = ("llava_next_video", "llava_next", "llava")
_HASHED_SUFFIXES = (".json", ".safetensors", ".bin", ".gguf", ".model", ".txt")
_HASHED_BYTES = 1 << 16


def _folder_kind(path: Path) -> str:
    """"trained" (a vlm-vision folder) or the transformers `model_type` of a folder we can evaluate."""
    if (path / CONFIG_NAME).is_file():
        return "trained"
    config = path / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type in TRANSFORMERS_KINDS:
        return model_type
    raise InputError("not a model folder we can evaluate", path, f"a vlm-vision trained folder (final/, "
                     f"checkpoint-STEP/ or a merged model, with vlm_config.json) or a transformers folder of "
                     f"model_type {list(TRANSFORMERS_KINDS)} (found model_type {model_type!r})")


def model_identity(path: str | Path) -> dict[str, Any]:
    """What a set of predictions was made with: the folder, its kind, and a fingerprint of its files.

    The fingerprint hashes each config/weight file's name, size, first and last 64 KiB (a second
    per folder even for large models): retrained or replaced weights change it.
    """
    path = Path(path).resolve()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}".encode())
        with file.open("rb") as f:
            digest.update(f.read(_HASHED_BYTES))
            f.seek(max(0, size - _HASHED_BYTES))
            digest.update(f.read())
    return {"path": str(path), "kind": _folder_kind(path), "fingerprint": digest.hexdigest()[:16]}


def load_eval_model(path: str | Path, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """A `VisionLanguageModel` in eval mode and its processor, from any folder we can evaluate.

    Args:
        path: a training run's `final/` or `checkpoint-STEP/`, a merged model (`merge_trained`), or a
            transformers LLaVA-NeXT-Video / LLaVA-NeXT / LLaVA folder with its tokenizer.
        device: where the model lives.
        dtype: the model's dtype.

    Raises:
        ValueError: for another kind of folder, or a tokenizer without a chat template.
    """
    path = Path(path)
    kind = _folder_kind(path)
    if kind == "trained":
        model, processor = load_trained(path, dtype=dtype, device=device)
    else:
        model = getattr(VisionLanguageModel, f"from_{kind}")(path, dtype=dtype).to(device).eval()
        sampling = saved_video_processor(path)  # the frames an export states (`vlm-vision export`)
        processor = VisionLanguageProcessor.for_model(load_tokenizer(str(path)), model,
                                                      num_frames=sampling.get("num_frames") or 32, fps=sampling.get("fps"))
    if not getattr(processor.tokenizer, "chat_template", None):
        raise InputError("a tokenizer without a chat_template", path, "a tokenizer with a chat_template; questions "
                         "are asked through it")
    return model, processor
