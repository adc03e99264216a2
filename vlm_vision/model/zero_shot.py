"""Zero-shot classification with CLIP: classes described in words, no training.

CLIP scores an image against a sentence by the cosine of their embeddings. To classify, each class
name is written into one or more prompts ("a photo of a {}."), the prompts are embedded, and the
image goes to the class whose text embedding is closest; a softmax over the scaled cosines gives
probabilities. The logits are exactly `transformers.CLIPModel`'s for the same prompts.

Several templates per class (a prompt ensemble): the paper averages each class's normalised prompt
embeddings and normalises the mean again, which is one text embedding per class, so the cost per
image does not grow with the number of templates.

Videos: each sampled frame is embedded as an image; the video's embedding is the mean of its
normalised frame embeddings, normalised again. Averaging before comparing keeps one embedding per
video and weighs every frame equally.

Text goes through CLIP's tokenizer. CLIP's text tower has 77 positions (start and end tokens
included); longer prompts are truncated, with a warning, keeping the end token so that the pooled
position still exists.

Shapes: B images, C classes, K templates, T frames, D embedding width, S image side.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer
from transformers.utils import cached_file

from video.clip import VideoClip
from video.decode import load_video
from vlm_vision.model.transforms import CLIPImageTransform

__all__ = ["ZeroShotClassifier", "average_frame_embeddings", "load_clip", "projected_embeddings", "tokenize"]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


class ZeroShotClassifier:
    """Classify images or videos among classes named in words, with a CLIP model.

    The model is put in eval mode; nothing is trained.

    Args:
        clip_model: a `transformers.CLIPModel` (both towers and projections).
        tokenizer: the CLIP tokenizer that goes with the model.
        image_transform: how images become pixels; default: CLIP's crop at the model's image size.
        batch_size: how many images (or frames) go through the image tower at once.

    Example:
        >>> clf = ZeroShotClassifier.from_pretrained("openai/clip-vit-base-patch32")
        >>> clf.classify(PIL.Image.open("cat.jpg"), ["cat", "dog"]).shape
        torch.Size([1, 2])
    """

    def __init__(self, clip_model: CLIPModel, tokenizer: Any, image_transform: CLIPImageTransform | None = None,
                 batch_size: int = 64) -> None:
        if not isinstance(clip_model, CLIPModel):
            raise TypeError(f"clip_model must be a transformers.CLIPModel, got {type(clip_model).__name__}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = clip_model.eval()
        self.tokenizer = tokenizer
        self.image_size = clip_model.config.vision_config.image_size
        self.image_transform = image_transform or CLIPImageTransform(image_size=self.image_size)
        self.batch_size = batch_size
        # CLIP's text tower has a fixed number of positions (77); prompts must fit in it
        self.max_text_length = clip_model.config.text_config.max_position_embeddings

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> ZeroShotClassifier:
        """Load model, tokenizer and preprocessing from a Hub id or a `CLIPModel.save_pretrained` folder.

        Args:
            name_or_path: e.g. "openai/clip-vit-large-patch14-336" (read from the HF cache when
                offline) or a local folder holding the model and its tokenizer files.
            **kwargs: passed to the constructor (`batch_size`).
        """
        model, tokenizer, transform = load_clip(name_or_path)
        return cls(model, tokenizer, image_transform=transform, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @torch.no_grad()
    def class_embeddings(self, class_names: Sequence[str],
                         templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """One unit-length text embedding per class: float[C, D].

        Each class's prompts (one per template) are embedded and normalised; their mean is
        normalised again.

        Raises:
            TypeError: if `class_names` is a single string.
            ValueError: for no classes, no templates, or a template without "{}".
        """
        class_names, templates = _check_prompts(class_names, templates)
        c, k = len(class_names), len(templates)
        prompts = [t.format(name) for name in class_names for t in templates]  # class-major: C x K
        batch = tokenize(self.tokenizer, prompts, self.max_text_length)
        text = projected_embeddings(self.model.get_text_features(
            input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)))
        text = F.normalize(text, dim=-1).view(c, k, -1)  # (C, K, D)
        return F.normalize(text.mean(dim=1), dim=-1)  # (C, D)

    @torch.no_grad()
    def image_embeddings(self, images: Any) -> torch.Tensor:
        """Unit-length image embeddings: float[B, D].

        Args:
            images: anything `CLIPImageTransform` accepts (PIL images, paths, uint8 arrays, lists),
                or preprocessed pixels float[B, 3, S, S].
        """
        return F.normalize(self._encode_pixels(self._pixels(images)), dim=-1)  # (B, D)

    @torch.no_grad()
    def video_embeddings(self, videos: Any, num_frames: int = 8) -> torch.Tensor:
        """One unit-length embedding per video, the mean of its frames' embeddings: float[V, D].

        Args:
            videos: a path, a `video.VideoClip`, or a list of these.
            num_frames: frames sampled uniformly from each file; a `VideoClip` is used as it is.

        Raises:
            TypeError: for something that is neither a path nor a `VideoClip`.
            video.VideoDecodeError: for a file that cannot be decoded.
        """
        items = [videos] if isinstance(videos, (str, os.PathLike, VideoClip)) else list(videos)
        if not items:
            raise ValueError("videos is empty")
        embeds, counts = [], []
        for item in items:
            if isinstance(item, VideoClip):
                clip = item
            elif isinstance(item, (str, os.PathLike)):
                clip = load_video(item, num_frames=num_frames, frame_scale=self.image_transform.frame_scale())
            else:
                raise TypeError(f"each video must be a path or a video.VideoClip, got {type(item).__name__}")
            pixels = self.image_transform(clip.frames)  # (T, 3, S, S)
            embeds.append(self._encode_pixels(pixels))  # (T, D)
            counts.append(pixels.shape[0])
        return average_frame_embeddings(torch.cat(embeds), counts)  # (V, D)

    @torch.no_grad()
    def logits(self, images: Any, class_names: Sequence[str],
               templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """Scaled cosine similarities, image x class: float[B, C] (CLIPModel's `logits_per_image`)."""
        return self._scaled(self.image_embeddings(images), self.class_embeddings(class_names, templates))

    def classify(self, images: Any, class_names: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """Class probabilities for each image: float[B, C], rows sum to 1.

        Args:
            images: anything `CLIPImageTransform` accepts, or preprocessed float[B, 3, S, S].
            class_names: the C classes, e.g. ["cat", "dog"].
            templates: prompts with "{}" where the class name goes; several are averaged.
        """
        return self.logits(images, class_names, templates).softmax(dim=-1)

    @torch.no_grad()
    def classify_video(self, videos: Any, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                       num_frames: int = 8) -> torch.Tensor:
        """Class probabilities for each video from its frames' averaged embedding: float[V, C]."""
        video = self.video_embeddings(videos, num_frames=num_frames)  # (V, D)
        return self._scaled(video, self.class_embeddings(class_names, templates)).softmax(dim=-1)

    def _scaled(self, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale.exp() * visual @ text.T  # (B, C)

    def _pixels(self, images: Any) -> torch.Tensor:
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            s = self.image_size
            if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
                raise ValueError(f"preprocessed images must be float[B, 3, {s}, {s}] for this model, "
                                 f"got {tuple(images.shape)}")
            return images
        return self.image_transform(images)  # (B, 3, S, S)

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image-tower embeddings (projected, not normalised) in chunks: float[B, D]."""
        dtype = self.model.visual_projection.weight.dtype
        chunks = [projected_embeddings(self.model.get_image_features(pixel_values=chunk.to(self.device, dtype)))
                  for chunk in pixels.split(self.batch_size)]  # (b, D) each
        return torch.cat(chunks)  # (B, D)


def load_clip(name_or_path: str | os.PathLike) -> tuple[CLIPModel, CLIPTokenizer, CLIPImageTransform]:
    """A CLIP model, its tokenizer and its preprocessing, from a Hub id or a saved folder.

    The preprocessing comes from the checkpoint's `preprocessor_config.json`; a checkpoint
    without one gets CLIP's crop and normalisation at the model's image size.
    """
    model = CLIPModel.from_pretrained(name_or_path)
    tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
    if Path(name_or_path).is_dir():
        config = Path(name_or_path) / "preprocessor_config.json"
        config = str(config) if config.is_file() else None
    else:
        config = cached_file(str(name_or_path), "preprocessor_config.json",
                             _raise_exceptions_for_missing_entries=False)
    if config is None:
        transform = CLIPImageTransform(image_size=model.config.vision_config.image_size)
    else:
        transform = CLIPImageTransform.from_processor_config(config)
    return model, tokenizer, transform


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int = 77) -> dict[str, torch.Tensor]:
    """CLIP-tokenize and pad a batch of texts, truncating (with a warning) those over `max_length`.

    Returns:
        {"input_ids": int64[N, L], "attention_mask": int64[N, L]}, L <= max_length.
    """
    texts = list(texts)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]  # with start and end tokens
    too_long = [(t, n) for t, n in zip(texts, lengths) if n > max_length]
    if too_long:
        text, n = too_long[0]
        warnings.warn(f"{len(too_long)} text(s) longer than CLIP's {max_length}-token limit were truncated to "
                      f"{max_length} tokens, e.g. {text[:60]!r}... ({n} tokens)", stacklevel=3)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def average_frame_embeddings(embeds: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Per-item unit embeddings from consecutive frame embeddings: float[sum(counts), D] -> float[V, D].

    Each frame is normalised, the frames of an item averaged, the mean normalised again. An image
    is an item with one frame.

    Raises:
        ValueError: if the counts do not add up to the number of rows, or one is not positive.
    """
    if sum(counts) != embeds.shape[0] or any(c <= 0 for c in counts):
        raise ValueError(f"frame counts {list(counts)} must be positive and add up to {embeds.shape[0]} rows")
    frames = F.normalize(embeds, dim=-1)  # (sum T, D)
    means = torch.stack([part.mean(dim=0) for part in frames.split(list(counts))])  # (V, D)
    return F.normalize(means, dim=-1)  # (V, D)


def projected_embeddings(output: Any) -> torch.Tensor:
    """The projected embedding from `get_image_features`/`get_text_features`: float[B, D].

    transformers 5 returns a model output whose `pooler_output` is the projection; 4.x returned
    the tensor itself.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _check_prompts(class_names: Sequence[str], templates: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(class_names, str) or isinstance(templates, str):
        raise TypeError(f"class_names and templates must be lists of strings, not one string: "
                        f"class_names={class_names!r}, templates={templates!r}")
    class_names, templates = list(class_names), list(templates)
    if not class_names or not templates:
        raise ValueError(f"need at least one class and one template, got {len(class_names)} classes and "
                         f"{len(templates)} templates")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"every template needs a '{{}}' for the class name; these have none: {bad}")
    return class_names, templates
