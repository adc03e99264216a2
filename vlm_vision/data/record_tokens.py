"""A LLaVA record -> token ids and labels, each placeholder expanded to its visual tokens, fitted to length.

Why the placeholder is expanded after tokenizing: `<video>` is a special token, so it is exactly one
id in the tokenized text; it is then repeated once per visual token (the LLM sees one position per
visual token, `vlm_vision.model.placeholders`), and those positions never carry labels.

`VisualSpec` holds the numbers that turn media into tokens (from the processor and the model).
`sample_tokens` builds a sample's ids from its decoded media; `scan_one` / `scan_records` check a
record without decoding it (frames from the sampling settings or a cached file's header, an image's
size from its header), so parse problems, missing media and visual spans that `max_length` would
cut are found when the dataset is built.

Shapes: L sequence length, T frames, N' pooled tokens per frame, D tower width.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from vlm_vision.data.conversation_tokens import tokenize_conversation
from vlm_vision.data.formats import CACHED_SUFFIX, PLACEHOLDERS, BadSample, MediaRoots, Record, parse_record
from vlm_vision.data.files import Skipped
from vlm_vision.model.placeholders import IGNORE_INDEX, VisualSpanCut, expand_placeholders, span_length, truncate
from vlm_vision.model.video_prompt import time_instruction

__all__ = ["SEVERAL_TIMED_VIDEOS", "VisualSpec", "cached_frames", "expand_placeholder", "fit_length", "frame_times",
           "image_size", "prompt_messages", "sample_tokens", "scan_one", "scan_records", "tiled_image", "visual_counts",
           "visual_frames"]

_EXIF_ORIENTATION = 0x0112


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
    if any(span_length(c) < 1 for c in (counts if counts is not None else [count])):
        raise ValueError(f"count must be >= 1 visual token, got {count}")
    spans = counts if counts is not None else itertools.repeat(count)
    out_ids, out_labels = expand_placeholders(ids, {token_id: spans}, labels)
    return out_ids, out_labels


def fit_length(ids: list[int], labels: list[int], max_length: int, visual_ids: Sequence[int],
               sample_id: str = "?") -> tuple[list[int], list[int]]:
    """Cut a sequence to `max_length` tokens, unless that would cut a visual span.

    Raises:
        BadSample: when a visual token lies at or past `max_length`, or when no assistant token is
            left after the cut.
    """
    try:
        kept = truncate(ids, max_length, visual_ids)
    except VisualSpanCut as cut:
        raise BadSample(sample_id, str(cut)) from None
    ids, labels = ids[kept], labels[kept]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise BadSample(sample_id, f"no assistant tokens within max_length={max_length}")
    return ids, labels


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
    """Put LLaVA-Video's time sentence after the `<video>` placeholder (`vlm_vision.model.video_prompt`)."""


def cached_frames(path: Path, tokens_per_frame: int, sample_id: str) -> int:
    """Frames T in a cached token file, read from its header only.

    Raises:
        BadSample: when the file has no `tokens` float[T, N', D] with the expected N'.
    """
    from video.extract import read_token_header  # lazy: imports torch, which most scan workers never need

    try:
        shape = read_token_header(path, require_format=False).shape
    except ValueError as e:  # no `tokens` tensor
        raise BadSample(sample_id, str(e)) from None
    if len(shape) != 3 or shape[1] != tokens_per_frame:
        raise BadSample(sample_id, f"{path} holds tokens of shape {list(shape)}; expected [T, {tokens_per_frame}, D]")
    return shape[0]


SEVERAL_TIMED_VIDEOS = ("record has {n} videos; a prompt that states frame times (time instruction or time "
                        "markers) takes one video per record")


def visual_frames(record: Record, visual: VisualSpec) -> int | list[int]:
    """Frames each of a record's videos will have, without decoding them (1 for images and text).

    Raw videos are assumed to yield `visual.num_frames` frames; cached ones are read from the header.
    One video gives an int, several a list (each video its own frames).
    """
    if record.media_kind != "video":
        return 1
    frames = [cached_frames(p, visual.tokens_per_frame, record.id) if p.suffix == CACHED_SUFFIX else visual.num_frames
              for p in record.media_paths]
    return frames[0] if len(frames) == 1 else frames


def tiled_image(record: Record, visual: VisualSpec) -> bool:
    """True for a record whose one image an anyres model tiles (its size sets its tokens)."""
    return record.media_kind == "image" and visual.anyres_tokens is not None and len(record.media_paths) == 1


def image_size(record: Record) -> tuple[int, int]:
    """(height, width) of a record's image, upright (EXIF orientation applied), from the header only.

    Raises:
        BadSample: when the file is not an image PIL can read.
    """
    try:
        with PIL.Image.open(record.media_path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # a quarter turn: the sides swap
                width, height = height, width
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise BadSample(record.id, f"image could not be read: {record.media_path}: {e}") from e
    return height, width


def visual_counts(record: Record, visual: VisualSpec, frames: int | Sequence[int],
                  image_size: tuple[int, int] | None = None) -> tuple[int, list[int]]:
    """(placeholder id, visual tokens of each medium in order) of a media record.

    `frames` is the frame count of every video, or a list of each video's. Several images on an
    anyres model are each one crop at base resolution (`image_tokens`, no tiling), as LLaVA-OneVision
    reads multi-image records.
    """
    medium, media = record.media_kind, max(1, len(record.media_paths))
    if medium == "video":
        per_video = list(frames) if isinstance(frames, Sequence) else [frames] * media
        return visual.token_ids[medium], [visual.video_tokens(t) for t in per_video]  # each its own budget
    if visual.anyres_tokens is None or media != 1:
        count = visual.image_tokens
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
    if len(record.media_paths) > 1:
        raise BadSample(record.id, SEVERAL_TIMED_VIDEOS.format(n=len(record.media_paths)))
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
    placeholder = PLACEHOLDERS["video"]
    sentence = time_instruction(*times)
    for k, m in enumerate(messages):
        if placeholder in m["content"]:
            messages[k] = {**m, "content": m["content"].replace(placeholder, f"{placeholder}\n{sentence}", 1)}
            break
    return messages


def _tokens_with_placeholders(record: Record, tokenizer: Any, visual: VisualSpec, frames: int | list[int],
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


def sample_tokens(record: Record, tokenizer: Any, visual: VisualSpec, frames: int | list[int],
                  max_length: int, *, image_size: tuple[int, int] | None = None,
                  clip: Any = None) -> tuple[list[int], list[int]]:
    """Token ids and labels of a record, each placeholder expanded to its visual tokens, fitted to length.

    Args:
        frames: frames of the record's video, or of each video (ignored for images and text).
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
    size = image_size(record) if tiled_image(record, visual) else None
    frames = visual_frames(record, visual)
    ids, labels, _, counts = _tokens_with_placeholders(record, tokenizer, visual, frames, size)
    length = len(ids) - len(counts) + sum(span_length(c) for c in counts)
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
