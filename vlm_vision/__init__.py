"""vlm-vision: the vision side of a LLaVA-NeXT-Video style model.

The names below are the public API (everything else is private). They are imported on first use,
so that `import vlm_vision` (and `vlm-vision --help`) does not pay for torch and transformers until
something needs them. No submodule shares a public name (the loss `clip_loss` lives in `contrastive`,
the loop `train` in `training`), so importing a submodule never hides a public function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from video.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "DEFAULT_PINPOINTS": "vlm_vision.model.anyres",
    "anyres_num_tokens": "vlm_vision.model.anyres",
    "anyres_pixel_values": "vlm_vision.model.anyres",
    "pack_image_features": "vlm_vision.model.anyres",
    "select_best_resolution": "vlm_vision.model.anyres",
    "unpad_shape": "vlm_vision.model.anyres",
    "CLIP_MEAN": "vlm_vision.model.configs",
    "CLIP_STD": "vlm_vision.model.configs",
    "CLIPImageTransform": "vlm_vision.model.transforms",
    "CLIPVisionTower": "vlm_vision.model.tower",
    "vision_config": "vlm_vision.model.configs",
    "VisionLanguageModel": "vlm_vision.model.fusion",
    "VisionLanguageProcessor": "vlm_vision.model.processor",
    "LogitScale": "vlm_vision.model.contrastive",
    "ZeroShotClassifier": "vlm_vision.model.zero_shot",
    "clip_loss": "vlm_vision.model.contrastive",
    "TrainConfig": "vlm_vision.training.config",
    "train": "vlm_vision.training.loop",
    "load_trained": "vlm_vision.model.run_folder",
    "merge_trained": "vlm_vision.model.run_folder",
    "ExportSettings": "vlm_vision.export.folder",
    "export_model": "vlm_vision.export.folder",
    "EvalConfig": "vlm_vision.evaluation.run",
    "run_eval": "vlm_vision.evaluation.run",
    "load_eval_model": "vlm_vision.evaluation.model",
    "answer_questions": "vlm_vision.evaluation.answers",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from vlm_vision.model.anyres import (  # noqa: F401
        DEFAULT_PINPOINTS,
        anyres_num_tokens,
        select_best_resolution,
        unpad_shape,
    )
    from vlm_vision.model.anyres import anyres_pixel_values, pack_image_features  # noqa: F401
    from vlm_vision.model.configs import CLIP_MEAN, CLIP_STD, vision_config  # noqa: F401
    from vlm_vision.model.transforms import CLIPImageTransform  # noqa: F401
    from vlm_vision.model.tower import CLIPVisionTower  # noqa: F401
    from vlm_vision.export.folder import ExportSettings, export_model  # noqa: F401
    from vlm_vision.model.fusion import VisionLanguageModel  # noqa: F401
    from vlm_vision.model.processor import VisionLanguageProcessor  # noqa: F401
    from vlm_vision.model.contrastive import LogitScale, clip_loss  # noqa: F401
    from vlm_vision.model.zero_shot import ZeroShotClassifier  # noqa: F401
    from vlm_vision.training.config import TrainConfig  # noqa: F401
    from vlm_vision.training.loop import train  # noqa: F401
    from vlm_vision.model.run_folder import load_trained, merge_trained  # noqa: F401
    from vlm_vision.evaluation.run import EvalConfig, run_eval  # noqa: F401
    from vlm_vision.evaluation.answers import answer_questions  # noqa: F401
    from vlm_vision.evaluation.model import load_eval_model  # noqa: F401
