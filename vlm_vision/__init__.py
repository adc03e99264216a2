"""vlm-vision: the vision side of a LLaVA-NeXT-Video style model.

Public API (everything else is private):
"""

from vlm_vision.anyres import (
    DEFAULT_PINPOINTS,
    anyres_num_tokens,
    anyres_pixel_values,
    pack_image_features,
    select_best_resolution,
    unpad_shape,
)
from vlm_vision.clip_loss import LogitScale, clip_loss
from vlm_vision.configs import CLIP_MEAN, CLIP_STD, vision_config
from vlm_vision.fusion import VisionLanguageModel
from vlm_vision.processor import VisionLanguageProcessor
from vlm_vision.tower import CLIPVisionTower
from vlm_vision.train import TrainConfig, train
from vlm_vision.trained import load_trained, merge_trained
from vlm_vision.transforms import CLIPImageTransform
from vlm_vision.zero_shot import ZeroShotClassifier

__all__ = [
    "DEFAULT_PINPOINTS",
    "anyres_num_tokens",
    "anyres_pixel_values",
    "pack_image_features",
    "select_best_resolution",
    "unpad_shape",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPImageTransform",
    "CLIPVisionTower",
    "vision_config",
    "VisionLanguageModel",
    "VisionLanguageProcessor",
    "LogitScale",
    "ZeroShotClassifier",
    "clip_loss",
    "TrainConfig",
    "train",
    "load_trained",
    "merge_trained",
]
