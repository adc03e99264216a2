"""LLaVA records -> `Example`s (token ids, labels, media), and padded batches of them.

Training reads its data through `ConversationDataset`; evaluation builds `Example`s of its own
(a prompt and one option) and pads them with the same `pad_batch`.

A record is LLaVA's format: `{"id", "video" | "image", "conversations": [{"from": "human" | "gpt",
"value": ...}, ...]}`, the media placeholder (`<video>` or `<image>`) inside a human turn, the media
path relative to a media root (`vlm_vision.data.formats` parses it). A `video` that ends in
`.safetensors` is a file written by `vlm-vision extract`: pooled tower features, so training skips
decoding and the tower. Token ids and labels come from `vlm_vision.data.record_tokens` (the conversation
rendered with the chat template, `vlm_vision.data.conversation_tokens`; placeholders expanded,
`vlm_vision.model.placeholders`).

Bad records never stop a run: parse problems, missing media and visual spans that would be cut by
`max_length` are found when the dataset is built (`scan_records`); a video that fails to decode is
found when it is loaded, and so is an image that cannot be read. Both become a `Skipped(id, reason)`
that the training loop counts and logs.

Shapes: B batch, L sequence length, T frames, N' pooled tokens per frame, D tower width, S image side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from vlm_vision.model.anyres import BASE_RESOLUTION
from vlm_vision.data.formats import CACHED_SUFFIX, BadSample, Record
from vlm_vision.data.files import Skipped
from vlm_vision.model.placeholders import IGNORE_INDEX
from vlm_vision.data.record_tokens import VisualSpec, sample_tokens

__all__ = ["ConversationDataset", "Example", "pad_batch"]


@dataclass
class Example:
    """One tokenized sample with its media tensor.

    `media` is float[T, 3, S, S] frames for "video", float[T, N', D] tower features for
    "video_features" (several videos: a list of those, each with its own T), float[K, 3, S, S] for K
    "image"s (float[P, 3, S, S], its crops, for an anyres image), None for text. `image_size` is an
    anyres image's (height, width), or `BASE_RESOLUTION` for several images on an anyres model (each one
    crop, not tiled). `source` is the data file and position the sample came from.
    """

    id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    media_kind: str | None
    media: torch.Tensor | list[torch.Tensor] | None
    image_size: tuple[int, int] | None = None
    source: str = ""


@dataclass(eq=False, repr=False)
class ConversationDataset(torch.utils.data.Dataset):
    """Records -> `Example`s, loading media lazily; a failed load returns a `Skipped`.

    Args:
        records: parsed records (see `scan_records` to drop bad ones up front).
        tokenizer: fast tokenizer with a chat template and the placeholder tokens.
        visual: placeholder ids and token counts.
        max_length: longest sequence, visual tokens included.
        load_video: path -> uint8[T, H, W, 3] frames (raw videos).
        load_cached: path -> float[T, N', D] pooled tower features (`.safetensors`).
        transform: uint8 frames or an image path -> float[T, 3, S, S].
        load_anyres: for anyres models, an image path -> (its crops float[P, 3, S, S], (height, width)).
        decode_errors: exception types a media loader raises for unreadable media.
    """

    records: Sequence[Record]
    tokenizer: Any
    visual: VisualSpec
    _: KW_ONLY
    max_length: int
    load_video: Callable[[Path], torch.Tensor]
    load_cached: Callable[[Path], torch.Tensor]
    transform: Callable[[Any], torch.Tensor]
    load_anyres: Callable[[Path], tuple[torch.Tensor, tuple[int, int]]] | None = None
    decode_errors: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if (self.visual.anyres_tokens is None) != (self.load_anyres is None):
            raise ValueError("an anyres VisualSpec needs load_anyres, and load_anyres needs an anyres VisualSpec")
        # Kept as given: a `LazyRecords` over the memory-mapped store stays lazy (no per-record list).

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example | Skipped:
        record = None
        try:
            record = self.records[index]  # a lazy record sequence parses (and may refuse) here
            kind, media, size, clip = self._load_media(record)
            frames = 1
            if kind in ("video", "video_features"):
                frames = [m.shape[0] for m in media] if isinstance(media, list) else media.shape[0]
            ids, labels = sample_tokens(record, self.tokenizer, self.visual, frames, self.max_length,
                                        image_size=None if size == BASE_RESOLUTION else size, clip=clip)
        except BadSample as e:
            return Skipped(e.sample_id, e.reason, record.source if record else _source_of(self.records, index))
        except self.decode_errors as e:
            return Skipped(record.id, f"media could not be decoded: {e}", record.source)
        return Example(record.id, torch.tensor(ids), torch.tensor(labels), kind, media, size, record.source)

    def _load_media(self, record: Record) -> tuple[str | None, Any, tuple[int, int] | None, Any]:
        """(kind, media, anyres image size, the `VideoClip` when the video loader gives one).

        Several videos give a list of each video's media, all raw or all cached.
        """
        if record.media_kind is None:
            return None, None, None, None
        if record.media_kind == "image":
            return self._load_images(record)
        if len(record.media_paths) > 1:
            loaded = [self._load_video(record, path) for path in record.media_paths]
            kinds = {kind for kind, _, _ in loaded}
            if len(kinds) > 1:
                raise BadSample(record.id, "a record's videos must be all raw or all cached tokens, not mixed")
            return kinds.pop(), [media for _, media, _ in loaded], None, None  # V x (T_v, ...)
        kind, media, clip = self._load_video(record, record.media_path)
        return kind, media, None, clip

    def _load_images(self, record: Record) -> tuple[str, torch.Tensor, tuple[int, int] | None, None]:
        try:
            if self.load_anyres is not None and len(record.media_paths) == 1:
                crops, size = self.load_anyres(record.media_path)  # (P, 3, S, S), (H, W)
                return "image", crops, size, None
            images = torch.cat([self.transform(p) for p in record.media_paths])  # (K, 3, S, S)
            # On an anyres model several images are each one crop at base resolution (LLaVA-OneVision).
            return "image", images, BASE_RESOLUTION if self.load_anyres is not None else None, None
        except (ValueError, OSError, PIL.Image.DecompressionBombError) as e:  # what PIL raises for a bad file
            if isinstance(e, BadSample):
                raise
            raise BadSample(record.id, f"image could not be read: {e}") from e  # a TypeError is ours: it propagates

    def _load_video(self, record: Record, path: Path) -> tuple[str, torch.Tensor, Any]:
        """(kind, frames float[T, 3, S, S] or cached tokens float[T, N', D], the `VideoClip` or None)."""
        if path.suffix == CACHED_SUFFIX:
            tokens = self.load_cached(path)  # (T, N', D)
            if tokens.ndim != 3 or tokens.shape[1] != self.visual.tokens_per_frame:
                raise BadSample(record.id, f"cached tokens {path} have shape {list(tokens.shape)}; "
                                           f"expected [T, {self.visual.tokens_per_frame}, D]")
            return "video_features", tokens, None
        clip = self.load_video(path)  # a VideoClip, or uint8[T, H, W, 3] frames
        frames = getattr(clip, "frames", clip)  # (T, H, W, 3) uint8
        return "video", self.transform(frames), clip if hasattr(clip, "frames") else None  # (T, 3, S, S)


def _source_of(records: Sequence[Any], index: int) -> str:
    source = getattr(records, "source", None)
    return source(index) if callable(source) else ""


# ----- batching ---------------------------------------------------------------------------------


def pad_batch(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids (with `pad_token_id`), labels (-100) and the attention mask (0) to the longest.

    Returns:
        {"input_ids": long[B, L], "attention_mask": long[B, L], "labels": long[B, L]}.
    """
    b, length = len(examples), max(len(e.input_ids) for e in examples)
    input_ids = torch.full((b, length), pad_token_id, dtype=torch.long)  # (B, L)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((b, length), dtype=torch.long)  # (B, L)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = e.input_ids
        labels[i, :n] = e.labels
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
