"""The parts a `VisionLanguageModel` is assembled from, as a converter hands them over.

The converters (`vlm_vision.model.interchange` for transformers' LLaVA classes, `vlm_vision.model.llava_checkpoint`
for LLaVA's own folders) read weights and settings into these parts; `VisionLanguageModel`'s
classmethods assemble them. So the converters never import the model class, and the model class
imports the converters: imports point one way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from vlm_vision.model.tower import CLIPVisionTower


@dataclasses.dataclass
class ModelParts:
    """A tower, a projector, an LLM and the model's keyword settings, ready to assemble."""

    tower: CLIPVisionTower
    projector: nn.Module
    llm: nn.Module
    settings: dict[str, Any]
    """`VisionLanguageModel` keyword arguments: token ids, pooling, newlines, anyres pinpoints."""
