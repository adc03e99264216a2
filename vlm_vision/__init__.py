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
    "DEFAULT_PINPOINTS": "vlm_vision.anyres",
    "anyres_num_tokens": "vlm_vision.anyres",
    "anyres_pixel_values": "vlm_vision.anyres",
    "pack_image_features": "vlm_vision.anyres",
    "select_best_resolution": "vlm_vision.anyres",
    "unpad_shape": "vlm_vision.anyres",
    "CLIP_MEAN": "vlm_vision.configs",
    "CLIP_STD": "vlm_vision.configs",
    "CLIPImageTransform": "vlm_vision.transforms",
    "CLIPVisionTower": "vlm_vision.tower",
    "vision_config": "vlm_vision.configs",
    "VisionLanguageModel": "vlm_vision.fusion",
    "VisionLanguageProcessor": "vlm_vision.processor",
    "LogitScale": "vlm_vision.contrastive",
    "ZeroShotClassifier": "vlm_vision.zero_shot",
    "clip_loss": "vlm_vision.contrastive",
    "TrainConfig": "vlm_vision.train_config",
    "train": "vlm_vision.training",
    "load_trained": "vlm_vision.trained",
    "merge_trained": "vlm_vision.trained",
    "ExportSettings": "vlm_vision.export",
    "export_model": "vlm_vision.export",
    "EvalConfig": "vlm_vision.eval_run",
    "run_eval": "vlm_vision.eval_run",
    "load_eval_model": "vlm_vision.evaluation",
    "answer_questions": "vlm_vision.evaluation",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from vlm_vision.anyres import (  # noqa: F401
        DEFAULT_PINPOINTS,
        anyres_num_tokens,
        anyres_pixel_values,
        pack_image_features,
        select_best_resolution,
        unpad_shape,
    )
    from vlm_vision.configs import CLIP_MEAN, CLIP_STD, vision_config  # noqa: F401
    from vlm_vision.transforms import CLIPImageTransform  # noqa: F401
    from vlm_vision.tower import CLIPVisionTower  # noqa: F401
    from vlm_vision.export import ExportSettings, export_model  # noqa: F401
    from vlm_vision.fusion import VisionLanguageModel  # noqa: F401
    from vlm_vision.processor import VisionLanguageProcessor  # noqa: F401
    from vlm_vision.contrastive import LogitScale, clip_loss  # noqa: F401
    from vlm_vision.zero_shot import ZeroShotClassifier  # noqa: F401
    from vlm_vision.train_config import TrainConfig  # noqa: F401
    from vlm_vision.training import train  # noqa: F401
    from vlm_vision.trained import load_trained, merge_trained  # noqa: F401
    from vlm_vision.eval_run import EvalConfig, run_eval  # noqa: F401
    from vlm_vision.evaluation import answer_questions, load_eval_model  # noqa: F401
