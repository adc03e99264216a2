"""The parts a `VisionLanguageModel` is assembled from, and what a converter reads off an assembled one.

The converters (`vlm_vision.model.interchange` for transformers' LLaVA classes, `vlm_vision.model.llava_checkpoint`
for LLaVA's own folders) read weights and settings into a `ModelParts`; `VisionLanguageModel`'s
classmethods assemble them. Writing goes the other way: `interchange.save_transformers` reads the
parts and settings back off an `AssembledModel`, the interface `VisionLanguageModel` has. So the
converters never import the model class, and the model class imports the converters: imports point
one way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from vlm_vision.model.tower import CLIPVisionTower

__all__ = ["AssembledModel", "ModelParts"]


@dataclasses.dataclass
class ModelParts:
    """A tower, a projector, an LLM and the model's keyword settings, ready to assemble."""

    tower: CLIPVisionTower
    projector: nn.Module
    llm: nn.Module
    settings: dict[str, Any]
    """`VisionLanguageModel` keyword arguments: token ids, pooling, newlines, anyres pinpoints."""


class AssembledModel(Protocol):
    """An assembled model as a converter writes it out: its parts and the settings they were fused with.

    `VisionLanguageModel` has every one of these attributes (see its arguments for their meaning).
    """

    tower: CLIPVisionTower
    projector: nn.Module
    llm: nn.Module
    image_newline: torch.Tensor
    """float[D], the learned newline embedding."""
    image_token_id: int | None
    video_token_id: int | None
    pool_stride: int
    pool_mode: str
    video_newline: str
    image_grid_pinpoints: Sequence[Sequence[int]] | None
    anyres_convention: str
    faster_token_stride: int | None
    max_video_tokens: int | None
