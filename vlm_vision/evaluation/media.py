"""Each question's medium, loaded for the model: decoded frames, pooled token files, or image crops.

A medium that cannot be read does not stop an evaluation: it gives a `Loaded` with `error`, and
the question becomes an error row. `QuestionMedia` lets a DataLoader decode ahead of the model.

Shapes: T frames, N' pooled tokens per frame, D_v tower width, S image side, P anyres crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from video.clip import VideoDecodeError
from video.decode import load_video
from video.extract import load_video_tokens
from vlm_vision.model.anyres import anyres_pixel_values
from vlm_vision.evaluation.questions import Question

__all__ = ["Loaded", "QuestionMedia", "load_medium"]


@dataclass
class Loaded:
    """A question with its medium ready for the model, or the reason it could not be loaded.

    `kind` is "video" (`media` float[T, 3, S, S] frames), "video_features" (float[T, N', D_v] pooled
    tower tokens) or "image" (float[1, 3, S, S], or float[P, 3, S, S] crops with `image_size` for
    anyres models). `duration` is the seconds of video the question is about; `times` each frame's
    presentation time (for the time instruction and markers), `indices` each frame's index in the video
    .
    """

    question: Question
    kind: str | None = None
    media: torch.Tensor | None = None
    image_size: tuple[int, int] | None = None
    duration: float | None = None
    error: str | None = None
    times: list[float] | None = None
    indices: list[int] | None = None


def _load_video_tokens(question: Question, model: nn.Module) -> Loaded:
    """A token file's pooled tower tokens, when they were made the way `model` pools."""
    tokens = load_video_tokens(question.media_path)
    rows, cols = model.pooled_grid
    made = (tokens.pool_stride, tokens.pool_mode, tokens.layer, tokens.tokens.shape[1], tokens.tokens.shape[2])
    wanted = (model.pool_stride, model.pool_mode, model.tower.select_layer, rows * cols, model.tower.hidden_size)
    if made != wanted:
        return Loaded(question, error=f"token file {question.media_path} was made with (pool stride, pool mode, "
                                      f"layer, tokens per frame, width) {made}; this model needs {wanted}")
    if tokens.random_weights:
        return Loaded(question, error=f"token file {question.media_path} comes from a tower with random weights")
    times = tokens.presentation_times or tokens.timestamps
    return Loaded(question, "video_features", tokens.tokens, duration=tokens.duration, times=times,
                  indices=list(tokens.indices))  # (T, N', D_v)


def load_medium(question: Question, model: nn.Module, num_frames: int, sampling: dict[str, Any] | None = None) -> Loaded:
    """Decode or read a question's medium; a file that cannot be read gives a `Loaded` with `error`.

    `sampling` are `video.load_video`'s frame arguments (`VisionLanguageProcessor.video_sampling`);
    None: `num_frames` uniform frames, resized by the decoder process for the tower (`video.frame_scale`).
    """
    transform = model.tower.image_transform
    try:
        if question.cached:
            return _load_video_tokens(question, model)
        if question.media_kind == "video":
            sampling = sampling or {"num_frames": num_frames, "frame_scale": transform.frame_scale()}
            clip = load_video(question.media_path, **sampling, start=question.start,
                              end=question.end)
            window = min(question.end or clip.duration, clip.duration) - (question.start or 0.0)
            return Loaded(question, "video", transform(clip.frames), duration=window,
                          times=list(clip.presentation_times), indices=list(clip.indices))  # (T, 3, S, S)
        if model.image_grid_pinpoints is not None:
            crops, size = anyres_pixel_values(question.media_path, transform, grid_pinpoints=model.image_grid_pinpoints,
                                              tile_size=transform.image_size, convention=model.anyres_convention)
            return Loaded(question, "image", crops, image_size=tuple(size))  # (P, 3, S, S)
        return Loaded(question, "image", transform(question.media_path))  # (1, 3, S, S)
    except VideoDecodeError as e:
        return Loaded(question, error=f"video could not be decoded: {e.reason}")
    except (OSError, ValueError) as e:  # unreadable images, malformed token files
        return Loaded(question, error=f"{question.media_kind} could not be read: {e}")


class QuestionMedia(torch.utils.data.Dataset):
    """Questions -> `Loaded`, so that a DataLoader decodes ahead of the model."""

    def __init__(self, questions: Sequence[Question], model: nn.Module, num_frames: int,
                 sampling: dict[str, Any] | None = None):
        self.questions, self.model, self.num_frames, self.sampling = list(questions), model, num_frames, sampling

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> Loaded:
        return load_medium(self.questions[index], self.model, self.num_frames, self.sampling)
