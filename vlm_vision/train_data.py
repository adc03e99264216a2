"""Training data: LLaVA conversation records -> token ids, labels and media, ready to batch.

A record is LLaVA's format: `{"id", "video" | "image", "conversations": [{"from": "human" | "gpt",
"value": ...}, ...]}`, the media placeholder (`<video>` or `<image>`) inside a human turn, the media
path relative to a media root. A `video` that ends in `.safetensors` is a file written by
`vlm-vision extract`: pooled tower features, so training skips decoding and the tower.

Why labels come from character spans: the conversation is rendered once with the tokenizer's own
chat template and tokenized once, so the ids are exactly those the model sees at inference. Each
assistant turn's span is found by rendering the conversation up to that turn (with the generation
prompt) and up to its end; tokens that start inside such a span carry labels, every other token is
-100. The span includes the template's end-of-turn marker, so the model learns to stop.

Why the placeholder is expanded after tokenizing: `<video>` is a special token, so it is exactly one
id in the tokenized text; it is then repeated once per visual token (the LLM sees one position per
visual token), and those positions never carry labels.

Bad records never stop a run: parse problems, missing media and visual spans that would be cut by
`max_length` are found when the dataset is built (`scan_records`); a video that fails to decode is
found when it is loaded, and so is an image that cannot be read. Both become a `Skipped(id, reason)`
that the training loop counts and logs.

Shapes: L sequence length, T frames, N' pooled tokens per frame, D tower width, S image side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlm_vision.data_formats import (
    PLACEHOLDERS,
    ROLES,
    BadSample,
    MediaRoots,
    Record,
    Skipped,
    parse_record,
    read_records,
)

IGNORE_INDEX = -100
_EXIF_ORIENTATION = 0x0112
__all__ = ["IGNORE_INDEX", "PLACEHOLDERS", "ROLES", "BadSample", "ConversationDataset", "Example", "MediaRoots",
           "Record", "Skipped", "VisualSpec", "check_tokenizer", "expand_placeholder", "fit_length", "frame_times",
           "pad_batch", "parse_record", "prompt_messages", "read_records", "sample_tokens", "scan_records", "tokenize_conversation"]


# ----- tokenizing -------------------------------------------------------------------------------


def check_tokenizer(tokenizer: Any) -> None:
    """Fail early when a tokenizer cannot produce labels the way `tokenize_conversation` needs.

    Raises:
        ValueError: without a chat template, or when it is not a fast tokenizer (no offsets).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template "
                         f"(a Jinja template) before training")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; labels need "
                         f"offset mappings (load it with use_fast=True)")


def assistant_char_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` with the chat template and find each assistant turn's character span.

    Returns:
        (text, spans): the rendered conversation and `[start, end)` character spans, one per
        assistant turn, from after its generation prompt to the end of its turn markers.

    Raises:
        ValueError: when the template does not render a conversation's beginning as a prefix of
            the whole (labels cannot be placed then).
    """
    messages = list(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(before) and text.startswith(upto) and len(before) <= len(upto)):
            raise ValueError(f"the chat template does not render turns 0..{i} as a prefix of the whole "
                             f"conversation; cannot place assistant labels (before={before[-40:]!r}, "
                             f"upto={upto[-40:]!r})")
        spans.append((len(before), len(upto)))
    return text, spans


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and labels that are -100 everywhere but assistant turns.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        messages: chat-template messages.

    Returns:
        (input_ids, labels), both of length L; `labels[j] == input_ids[j]` on assistant tokens.

    Example:
        >>> ids, labels = tokenize_conversation(tok, [{"role": "user", "content": "hi"},
        ...                                           {"role": "assistant", "content": "red"}])
    """
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    k = 0  # token starts only grow and the spans are in order: one pass over both
    for j, (start, _end) in enumerate(enc["offset_mapping"]):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= start:
            labels[j] = ids[j]
    return ids, labels


def expand_placeholder(ids: Sequence[int], labels: Sequence[int], token_id: int,
                       count: int | Sequence[int]) -> tuple[list[int], list[int]]:
    """Repeat each `token_id` in `ids` `count` times (one per visual token); those labels are -100.

    `count` may be a list, one count per placeholder in order (images of different sizes); an entry
    may itself be the list of ids to put there (a video's span with its time markers).

    Example:
        >>> expand_placeholder([1, 9, 2], [-100, -100, 2], token_id=9, count=3)
        ([1, 9, 9, 9, 2], [-100, -100, -100, -100, 2])
    """
    counts = list(count) if isinstance(count, Sequence) else None
    if counts is not None and len(counts) != list(ids).count(token_id):
        raise ValueError(f"{len(counts)} counts for {list(ids).count(token_id)} placeholders {token_id}")
    if any((len(c) if isinstance(c, list) else c) < 1 for c in (counts if counts is not None else [count])):
        raise ValueError(f"count must be >= 1 visual token, got {count}")
    out_ids, out_labels, k = [], [], 0
    for i, lab in zip(ids, labels):
        if i == token_id:
            n = counts[k] if counts is not None else count
            k += 1
            span = n if isinstance(n, list) else [token_id] * n  # a span: placeholders and time markers
            out_ids += span
            out_labels += [IGNORE_INDEX] * len(span)
        else:
            out_ids.append(i)
            out_labels.append(lab)
    return out_ids, out_labels


def fit_length(ids: list[int], labels: list[int], max_length: int, visual_ids: Sequence[int],
               sample_id: str = "?") -> tuple[list[int], list[int]]:
    """Cut a sequence to `max_length` tokens, unless that would cut a visual span.

    Raises:
        BadSample: when a visual token lies at or past `max_length`, or when no assistant token is
            left after the cut.
    """
    if len(ids) > max_length:
        last_visual = max((j for j, i in enumerate(ids) if i in visual_ids), default=-1)
        if last_visual >= max_length:
            first_visual = next(j for j, i in enumerate(ids) if i in visual_ids)
            raise BadSample(sample_id, f"visual span would be truncated: tokens {first_visual}..{last_visual} of "
                                       f"{len(ids)}, max_length={max_length}")
        ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise BadSample(sample_id, f"no assistant tokens within max_length={max_length}")
    return ids, labels


# ----- the dataset ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisualSpec:
    """How the model turns media into placeholder tokens (all from the processor/model).

    Attributes:
        token_ids: placeholder id per media kind, e.g. {"video": 49153, "image": 49152}.
        video_tokens: frames -> number of visual tokens for one video of that many frames (with time
            markers, the length of its span, estimated with all times 0 before decoding).
        image_tokens: number of visual tokens for one image (one crop).
        tokens_per_frame: pooled tokens per frame N' a cached `.safetensors` must have.
        num_frames: frames sampled from a raw video.
        anyres_tokens: for anyres models (LLaVA-NeXT tiling), (height, width) -> visual tokens of an
            image of that size; None when every image is one crop of `image_tokens`.
    """

    token_ids: dict[str, int]
    video_tokens: Callable[[int], int]
    image_tokens: int
    tokens_per_frame: int
    num_frames: int
    anyres_tokens: Callable[[int, int], int] | None = None
    video_span: Callable[[int, Sequence[float] | None], list[int]] | None = None
    """(frames, their times) -> the ids a `<video>` expands to, time markers included
    (`VisionLanguageProcessor.video_span`); None: `video_tokens` placeholders."""
    time_instruction: bool = False
    """Put LLaVA-Video's time sentence after the `<video>` placeholder (`vlm_vision.video_prompt`)."""


@dataclass
class Example:
    """One tokenized sample with its media tensor.

    `media` is float[T, 3, S, S] frames for "video", float[T, N', D] tower features for
    "video_features", float[K, 3, S, S] for K "image"s (float[P, 3, S, S], its crops, for an anyres
    image), None for text. `image_size` is an anyres image's (height, width). `source` is the data
    file and position the sample came from.
    """

    id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    media_kind: str | None
    media: torch.Tensor | None
    image_size: tuple[int, int] | None = None
    source: str = ""


def cached_frames(path: Path, tokens_per_frame: int, sample_id: str) -> int:
    """Frames T in a cached token file, read from its header only.

    Raises:
        BadSample: when the file has no `tokens` float[T, N', D] with the expected N'.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if "tokens" not in f.keys():
            raise BadSample(sample_id, f"{path} has no 'tokens' tensor (keys: {list(f.keys())})")
        shape = f.get_slice("tokens").get_shape()
    if len(shape) != 3 or shape[1] != tokens_per_frame:
        raise BadSample(sample_id, f"{path} holds tokens of shape {list(shape)}; expected [T, {tokens_per_frame}, D]")
    return shape[0]


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

    def __init__(self, records: Sequence[Record], tokenizer: Any, visual: VisualSpec, *, max_length: int,
                 load_video: Callable[[Path], torch.Tensor], load_cached: Callable[[Path], torch.Tensor],
                 transform: Callable[[Any], torch.Tensor],
                 load_anyres: Callable[[Path], tuple[torch.Tensor, tuple[int, int]]] | None = None,
                 decode_errors: tuple[type[BaseException], ...] = ()):
        if (visual.anyres_tokens is None) != (load_anyres is None):
            raise ValueError("an anyres VisualSpec needs load_anyres, and load_anyres needs an anyres VisualSpec")
        self.load_anyres = load_anyres
        self.records = list(records)
        self.tokenizer = tokenizer
        self.visual = visual
        self.max_length = max_length
        self.load_video = load_video
        self.load_cached = load_cached
        self.transform = transform
        self.decode_errors = decode_errors

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example | Skipped:
        record = None
        try:
            record = self.records[index]  # a lazy record sequence parses (and may refuse) here
            kind, media, size, clip = self._load_media(record)
            frames = media.shape[0] if kind in ("video", "video_features") else 1
            ids, labels = sample_tokens(record, self.tokenizer, self.visual, frames, self.max_length,
                                        image_size=size, clip=clip)
        except BadSample as e:
            return Skipped(e.sample_id, e.reason, record.source if record else _source_of(self.records, index))
        except self.decode_errors as e:
            return Skipped(record.id, f"media could not be decoded: {e}", record.source)
        return Example(record.id, torch.tensor(ids), torch.tensor(labels), kind, media, size, record.source)

    def _load_media(self, record: Record) -> tuple[str | None, torch.Tensor | None, tuple[int, int] | None, Any]:
        """(kind, media, anyres image size, the `VideoClip` when the video loader gives one)."""
        if record.media_kind is None:
            return None, None, None, None
        if record.media_kind == "image":
            import PIL.Image

            try:
                if self.load_anyres is not None:
                    if len(record.media_paths) != 1:
                        raise BadSample(record.id, _ANYRES_ONE_IMAGE.format(n=len(record.media_paths)))
                    crops, size = self.load_anyres(record.media_path)  # (P, 3, S, S), (H, W)
                    return "image", crops, size, None
                return "image", torch.cat([self.transform(p) for p in record.media_paths]), None, None  # (K, 3, S, S)
            except (ValueError, OSError, PIL.Image.DecompressionBombError) as e:  # what PIL raises for a bad file
                if isinstance(e, BadSample):
                    raise
                raise BadSample(record.id, f"image could not be read: {e}") from e  # a TypeError is ours: it propagates
        if record.cached:
            tokens = self.load_cached(record.media_path)  # (T, N', D)
            if tokens.ndim != 3 or tokens.shape[1] != self.visual.tokens_per_frame:
                raise BadSample(record.id, f"cached tokens {record.media_path} have shape {list(tokens.shape)}; "
                                           f"expected [T, {self.visual.tokens_per_frame}, D]")
            return "video_features", tokens, None, None
        clip = self.load_video(record.media_path)  # a VideoClip, or uint8[T, H, W, 3] frames
        frames = getattr(clip, "frames", clip)  # (T, H, W, 3) uint8
        return "video", self.transform(frames), None, clip if hasattr(clip, "frames") else None  # (T, 3, S, S)


_ANYRES_ONE_IMAGE = ("record has {n} images; a model that tiles images (anyres) takes one image per record "
                     "(LLaVA-OneVision also reads multi-image records without tiling)")


def _source_of(records: Sequence[Any], index: int) -> str:
    source = getattr(records, "source", None)
    return source(index) if callable(source) else ""


def visual_frames(record: Record, visual: VisualSpec) -> int:
    """Frames a record's video will have, without decoding it (1 for images and text).

    Raw videos are assumed to yield `visual.num_frames` frames; cached ones are read from the header.
    """
    if record.media_kind != "video":
        return 1
    return cached_frames(record.media_path, visual.tokens_per_frame, record.id) if record.cached else visual.num_frames


def image_size(record: Record) -> tuple[int, int]:
    """(height, width) of a record's image, upright (EXIF orientation applied), from the header only.

    Raises:
        BadSample: when the file is not an image PIL can read.
    """
    import PIL.Image

    try:
        with PIL.Image.open(record.media_path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # a quarter turn: the sides swap
                width, height = height, width
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise BadSample(record.id, f"image could not be read: {record.media_path}: {e}") from e
    return height, width


def visual_counts(record: Record, visual: VisualSpec, frames: int,
                  image_size: tuple[int, int] | None = None) -> tuple[int, list[int]]:
    """(placeholder id, visual tokens of each medium in order) of a media record.

    Raises:
        BadSample: for several images on an anyres model.
    """
    medium, media = record.media_kind, max(1, len(record.media_paths))
    if medium == "video":
        count = visual.video_tokens(frames)
    elif visual.anyres_tokens is None:
        count = visual.image_tokens
    elif media != 1:
        raise BadSample(record.id, _ANYRES_ONE_IMAGE.format(n=media))
    elif image_size is None:
        raise ValueError(f"sample {record.id!r}: an anyres model needs the image's size to count its tokens")
    else:
        count = visual.anyres_tokens(*image_size)
    return visual.token_ids[medium], [count] * media


def frame_times(record: Record, visual: VisualSpec, frames: int, clip: Any = None) -> tuple[float, list[float]] | None:
    """(duration, each frame's presentation time) of a record's video when the prompt states times;
    before decoding (`clip` None) an estimate with every time 0."""
    if record.media_kind != "video" or not (visual.time_instruction or visual.video_span is not None):
        return None
    if clip is None:
        return 0.0, [0.0] * frames
    if not clip.presentation_times:
        raise BadSample(record.id, "the video loader gave no presentation times for the time prompt")
    return clip.duration, list(clip.presentation_times)


def prompt_messages(record: Record, visual: VisualSpec, times: tuple[float, list[float]] | None) -> list[dict]:
    """The record's messages, with LLaVA-Video's time sentence after `<video>` when `visual` asks for it."""
    messages = list(record.messages)
    if not visual.time_instruction or times is None:
        return messages
    from vlm_vision.video_prompt import time_instruction

    placeholder = PLACEHOLDERS["video"]
    sentence = time_instruction(*times)
    for k, m in enumerate(messages):
        if placeholder in m["content"]:
            messages[k] = {**m, "content": m["content"].replace(placeholder, f"{placeholder}\n{sentence}", 1)}
            break
    return messages


def _tokens_with_placeholders(record: Record, tokenizer: Any, visual: VisualSpec, frames: int,
                              image_size: tuple[int, int] | None,
                              clip: Any = None) -> tuple[list[int], list[int], int, list[int]]:
    times = frame_times(record, visual, frames, clip)
    ids, labels = tokenize_conversation(tokenizer, prompt_messages(record, visual, times))
    if record.media_kind is None:
        return ids, labels, -1, []
    token_id, counts = visual_counts(record, visual, frames, image_size)
    if times is not None and visual.video_span is not None:
        counts = [visual.video_span(frames, times[1]) for _ in counts]
    if ids.count(token_id) != len(counts):
        raise BadSample(record.id, f"the rendered conversation holds {ids.count(token_id)} {record.media_kind} "
                                   f"placeholder tokens (id {token_id}), expected {len(counts)}")
    return ids, labels, token_id, counts


def sample_tokens(record: Record, tokenizer: Any, visual: VisualSpec, frames: int,
                  max_length: int, *, image_size: tuple[int, int] | None = None,
                  clip: Any = None) -> tuple[list[int], list[int]]:
    """Token ids and labels of a record, each placeholder expanded to its visual tokens, fitted to length.

    Args:
        frames: frames of the record's video (ignored for images and text).
        image_size: (height, width) of the record's image; needed by anyres models only.
        clip: the decoded `VideoClip`, whose presentation times the time prompt states; None
            before decoding (the times are then estimated as 0, see `frame_times`).

    Raises:
        BadSample: when the rendered text does not hold one placeholder per medium, or the sequence
            cannot be fitted (see `fit_length`).
    """
    ids, labels, token_id, counts = _tokens_with_placeholders(record, tokenizer, visual, frames, image_size, clip)
    if counts:
        ids, labels = expand_placeholder(ids, labels, token_id, counts)
    return fit_length(ids, labels, max_length, tuple(visual.token_ids.values()) if counts else (), record.id)


def scan_one(record: Record, tokenizer: Any, visual: VisualSpec, max_length: int) -> int:
    """The token length a record will have (visual tokens included), checking everything short of decoding.

    Equal to `len(sample_tokens(...)[0])`, without building the expanded sequence when it fits
    (thousands of visual positions per video: most of the scan's time otherwise).

    Raises:
        BadSample: for any reason the record cannot be trained on (see `sample_tokens`, `image_size`).
    """
    size = image_size(record) if record.media_kind == "image" and visual.anyres_tokens else None
    frames = visual_frames(record, visual)
    ids, labels, _, counts = _tokens_with_placeholders(record, tokenizer, visual, frames, size)
    length = len(ids) - len(counts) + sum(len(c) if isinstance(c, list) else c for c in counts)
    if length <= max_length and any(lab != IGNORE_INDEX for lab in labels):
        return length
    return len(sample_tokens(record, tokenizer, visual, frames, max_length, image_size=size)[0])


def scan_records(raw_records: Sequence[dict[str, Any] | Skipped], media_root: str | Path | MediaRoots,
                 tokenizer: Any, visual: VisualSpec, max_length: int) -> tuple[list[Record], list[Skipped]]:
    """Parse every record and drop the ones that cannot be trained on.

    Returns:
        (kept, skipped): records in file order, and a `Skipped` with the reason for each dropped one
        (bad structure, missing media, visual span past `max_length`, no assistant tokens left).
    """
    kept, skipped = [], []
    for n, raw in enumerate(raw_records):
        if isinstance(raw, Skipped):
            skipped.append(raw)
            continue
        try:
            record = parse_record(raw, media_root, n, source=f"#{n}")
            scan_one(record, tokenizer, visual, max_length)
        except BadSample as e:
            skipped.append(Skipped(e.sample_id, e.reason, f"#{n}"))
            continue
        kept.append(record)
    return kept, skipped


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
