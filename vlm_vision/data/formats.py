"""Training records as the community ships them -> one canonical record, and back to LLaVA JSON.

Record shapes, all turned into the canonical LLaVA shape `{"id", "video" | "image": [paths],
"conversations": [{"from", "value"}]}` by `normalise` (pure, no file system):

- LLaVA: `conversations` with `from` human/gpt/system and the placeholder in a human turn.
  LLaVA-NeXT's code has a single placeholder, `<image>`, for every medium, and LLaVA-Video-178K
  writes its video records that way; a video record's `<image>` is read as `<video>`.
- A single-medium record with no placeholder: the placeholder is put at the start of the first
  human turn, followed by a newline (where LLaVA-NeXT's loader moves a lone `<image>`). Several
  media need one placeholder each, in order.
- `"image"` / `"video"` given as a string or a list of strings (OneVision's multi-image records).
- Text-only records (no media key) mixed in with the others.
- transformers' chat `messages`: `{"role", "content"}` where content is a string or a list of
  typed parts, `{"type": "text", "text"}`, `{"type": "image" | "video", "path" | "url" |
  "image" | "video": ...}`. A media part becomes its placeholder; parts are joined with newlines.

Files, mixtures and sampling live in `vlm_vision.data.files`; its readers (`load_rows`,
`read_records`) and the rows they give (`DataRows`, `Skipped`) are importable from here too.
Each record keeps where it came from (`source`: `file.json#12` or `file.jsonl:13`) so skips, logs
and predictions name it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from video.atomic_files import write_atomic
from vlm_vision.data.files import Skipped, load_rows

__all__ = [
    "BadSample",
    "CACHED_SUFFIX",
    "MediaRoots",
    "PLACEHOLDERS",
    "ROLES",
    "Record",
    "check_turns",
    "convert_to_llava",
    "normalise",
    "parse_record",
    "record_origin",
    "to_llava",
]

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
LLAVA_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}
PLACEHOLDERS = {"video": "<video>", "image": "<image>"}
CACHED_SUFFIX = ".safetensors"


class BadSample(ValueError):
    """A record that cannot be trained on; `reason` says why (it is skipped, not fatal)."""

    def __init__(self, sample_id: str, reason: str):
        super().__init__(f"sample {sample_id!r}: {reason}")
        self.sample_id = sample_id
        self.reason = reason



@dataclass(frozen=True)
class Record:
    """One parsed conversation; media is located but not loaded.

    Attributes:
        id: the record's `id` (or `#<index>` when it has none).
        messages: chat-template messages `{"role": "system" | "user" | "assistant", "content": str}`,
            holding one `<video>` or `<image>` per medium, in order.
        media_kind: "video", "image" or None for text-only.
        media_paths: the resolved media files, in prompt order (a single path is accepted too).
        source: the data file and position it came from (`train.json#12`, `train.jsonl:13`).
    """

    id: str
    messages: tuple[dict[str, str], ...]
    media_kind: str | None = None
    media_paths: tuple[Path, ...] | Path | None = ()
    source: str = ""

    def __post_init__(self) -> None:
        paths = self.media_paths
        if paths is None:
            paths = ()
        elif isinstance(paths, (str, Path)):
            paths = (Path(paths),)
        object.__setattr__(self, "media_paths", tuple(p if isinstance(p, Path) else Path(p) for p in paths))

    @property
    def media_path(self) -> Path | None:
        """The first medium, or None."""
        return self.media_paths[0] if self.media_paths else None

    @property
    def cached(self) -> bool:
        """True when the (first) video is pre-extracted tower features (a `.safetensors` file)."""
        return self.media_kind == "video" and self.media_path is not None and self.media_path.suffix == CACHED_SUFFIX

    @property
    def cached_paths(self) -> tuple[Path, ...]:
        """The record's pre-extracted token files (`.safetensors` videos)."""
        return tuple(p for p in self.media_paths if self.media_kind == "video" and p.suffix == CACHED_SUFFIX)


def record_origin(record: Record | Skipped) -> dict[str, str]:
    """`{"id", "source"}` of a record or a skip, for logs, `skipped.jsonl` and eval predictions."""
    return {"id": record.id, "source": record.source}


@dataclass(frozen=True)
class MediaRoots:
    """Folders that relative media paths are resolved against.

    `image_folder` / `video_folder` (LLaVA-NeXT's separate folders) win for their medium; then
    `media_root`; else the folder of the data file the record came from.
    """

    media_root: Path | None = None
    image_folder: Path | None = None
    video_folder: Path | None = None

    def folder(self, kind: str, data_dir: Path) -> Path:
        special = self.image_folder if kind == "image" else self.video_folder
        return Path(special or self.media_root or data_dir)


# ----- one record -------------------------------------------------------------------------------


def _media_list(value: Any, kind: str, sample_id: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise BadSample(sample_id, f"{kind!r} must be a path or a list of paths, got {value!r}")
    return values


def _from_messages(raw: dict[str, Any], sample_id: str) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """transformers' `messages` -> LLaVA turns and the media the typed parts name, in order."""
    turns, media = [], {"video": [], "image": []}
    for n, message in enumerate(raw["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            got = message.get("role") if isinstance(message, dict) else message
            raise BadSample(sample_id, f"message {n} has role {got!r}; expected one of {sorted(ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            texts = [content]
        elif isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind in PLACEHOLDERS:
                    where = next((part[k] for k in ("path", "url", kind) if isinstance(part.get(k), str)), None)
                    if where is None:
                        raise BadSample(sample_id, f"message {n}: a {kind} part needs a 'path': {part!r}")
                    media[kind].append(where)
                    texts.append(PLACEHOLDERS[kind])
                else:
                    raise BadSample(sample_id, f"message {n}: unknown content part {part!r}; expected "
                                               f"{{'type': 'text' | 'image' | 'video', ...}}")
        else:
            raise BadSample(sample_id, f"message {n} content must be a string or a list of parts")
        turns.append({"from": LLAVA_ROLES[ROLES[message["role"]]], "value": "\n".join(texts)})
    return turns, media


def normalise(raw: Any, index: int = 0) -> dict[str, Any]:
    """Any accepted record shape -> `{"id", "kind", "media": [paths], "conversations"}`, placeholders canonical.

    The conversation holds exactly one `<video>` (video records) or `<image>` (image records) per
    medium, all in human turns; nothing else changes. Pure: paths are not resolved.

    Raises:
        BadSample: for a malformed record, an unknown role, both media kinds, or placeholders that
            do not match the media (with both counts).
    """
    if not isinstance(raw, dict):
        raise BadSample(f"#{index}", f"record must be a JSON object, got {type(raw).__name__}")
    sample_id = str(raw.get("id", f"#{index}"))
    media = {"video": [], "image": []}
    if isinstance(raw.get("messages"), list) and "conversations" not in raw:
        if not raw["messages"]:
            raise BadSample(sample_id, "empty conversation")
        turns, media = _from_messages(raw, sample_id)
    else:
        turns = raw.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise BadSample(sample_id, "empty conversation")
        for n, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("from") not in ROLES:
                got = turn.get("from") if isinstance(turn, dict) else turn
                raise BadSample(sample_id, f"turn {n} has role {got!r}; expected one of {sorted(ROLES)}")
            if not isinstance(turn.get("value"), str):
                raise BadSample(sample_id, f"turn {n} has no text 'value'")
    for kind in PLACEHOLDERS:
        if raw.get(kind) is not None:
            media[kind] = media[kind] + _media_list(raw[kind], kind, sample_id)
    kinds = [k for k in PLACEHOLDERS if media[k]]
    if len(kinds) > 1:
        raise BadSample(sample_id, "record has both 'video' and 'image'; one medium per record is supported")
    kind = kinds[0] if kinds else None
    turns = [{"from": t["from"], "value": t["value"]} for t in turns]
    check_turns(turns, sample_id)
    return {"id": sample_id, "kind": kind, "media": media[kind] if kind else [],
            "conversations": _place_placeholders(turns, kind, len(media[kind]) if kind else 0, sample_id)}


def _place_placeholders(turns: list[dict[str, str]], kind: str | None, count: int,
                        sample_id: str) -> list[dict[str, str]]:
    """Check the placeholders against the media; read a video's `<image>` as `<video>`; add a missing lone one."""
    human = [t for t in turns if ROLES[t["from"]] == "user"]
    other = [t for t in turns if ROLES[t["from"]] != "user"]
    for tag in PLACEHOLDERS.values():
        elsewhere = sum(t["value"].count(tag) for t in other)
        if elsewhere:
            raise BadSample(sample_id, f"found {elsewhere} {tag} elsewhere than human turns; placeholders "
                                       f"belong in human turns")
    n_video = sum(t["value"].count("<video>") for t in human)
    n_image = sum(t["value"].count("<image>") for t in human)
    if kind is None:
        if n_video or n_image:
            raise BadSample(sample_id, f"found {n_video} <video> and {n_image} <image> in human turns; expected "
                                       f"none for a record with no media")
        return turns
    if kind == "video":
        if n_video and n_image:
            raise BadSample(sample_id, f"a video record mixes <video> ({n_video}) and <image> ({n_image}) placeholders")
        if n_image:  # LLaVA-NeXT's one placeholder for every medium
            for t in human:
                t["value"] = t["value"].replace("<image>", "<video>")
            n_video = n_image
        found = n_video
    else:
        if n_video:
            raise BadSample(sample_id, f"found {n_video} <video> in human turns of an image record")
        found = n_image
    tag = PLACEHOLDERS[kind]
    if found == 0 and count == 1 and human:
        human[0]["value"] = f"{tag}\n{human[0]['value']}"
        return turns
    if found != count:
        raise BadSample(sample_id, f"found {found} {tag} in human turns; expected {count}, one per {kind}")
    return turns


def check_turns(turns: Sequence[dict[str, str]], sample_id: str) -> list[dict[str, str]]:
    """LLaVA turns -> chat-template messages; a conversation must open with a human turn and teach something."""
    messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if not roles or roles[0] != "user":
        raise BadSample(sample_id, "conversation must start with a human turn")
    if "assistant" not in roles:
        raise BadSample(sample_id, "no gpt (assistant) turn to learn from")
    return messages


def parse_record(raw: Any, media_root: str | Path | MediaRoots, index: int = 0, source: str = "",
                 data_dir: str | Path | None = None) -> Record:
    """Check one raw record and turn it into a `Record`, its media resolved and found.

    Args:
        raw: the record as read from JSON, in any accepted shape.
        media_root: folder relative media paths are resolved against, or `MediaRoots`.
        index: position in the file, used as the id when the record has none.
        source: where the record came from (kept in the `Record`).
        data_dir: the data file's folder (the fallback root of `MediaRoots`).

    Raises:
        BadSample: for the problems `normalise` finds, a conversation that does not start with a
            human turn or has no assistant turn, or missing media. Several images or several videos
            are one record (each medium with its own tokens).
    """
    canon = normalise(raw, index)
    sample_id, kind = canon["id"], canon["kind"]
    messages = check_turns(canon["conversations"], sample_id)
    roots = media_root if isinstance(media_root, MediaRoots) else MediaRoots(media_root=Path(media_root))
    paths: list[Path] = []
    if kind is not None:
        folder = roots.folder(kind, Path(data_dir) if data_dir is not None else Path("."))
        for name in canon["media"]:
            path = folder / name  # an absolute name stays itself
            if not os.path.isfile(path):
                raise BadSample(sample_id, f"missing media: {path}")
            paths.append(path)
    return Record(sample_id, tuple(messages), kind, tuple(paths), source)


# ----- writing LLaVA JSON -------------------------------------------------------------------------


def to_llava(canon: dict[str, Any], video_placeholder: str = "<image>") -> dict[str, Any]:
    """A normalised record in LLaVA's JSON shape; videos use `video_placeholder` (LLaVA-NeXT's `<image>`).

    A single medium is written as a string, several as a list.
    """
    if video_placeholder not in PLACEHOLDERS.values():
        raise ValueError(f"video_placeholder must be '<image>' or '<video>', got {video_placeholder!r}")
    out: dict[str, Any] = {"id": canon["id"]}
    if canon["kind"] is not None:
        out[canon["kind"]] = canon["media"][0] if len(canon["media"]) == 1 else list(canon["media"])
    turns = canon["conversations"]
    if canon["kind"] == "video" and video_placeholder != "<video>":
        turns = [{"from": t["from"], "value": t["value"].replace("<video>", video_placeholder)} for t in turns]
    out["conversations"] = turns
    return out


def convert_to_llava(spec: str | Path, out: str | Path, *, seed: int = 0,
                     video_placeholder: str = "<image>") -> tuple[int, list[Skipped]]:
    """Write every record of a data spec as one LLaVA JSON list at `out` (atomically).

    Records that cannot be normalised are left out and returned as `Skipped` (with their source).
    Media paths are written as given (not resolved), so the same media folders still apply.

    Returns:
        (records written, skipped).
    """
    rows = load_rows(spec, seed)
    written, skipped = [], []
    for i, raw in enumerate(rows.raws):
        if isinstance(raw, Skipped):
            skipped.append(raw)
            continue
        try:
            written.append(to_llava(normalise(raw, rows.positions[i]), video_placeholder))
        except BadSample as e:
            skipped.append(Skipped(e.sample_id, e.reason, rows.source(i)))

    write_atomic(Path(out), json.dumps(written, ensure_ascii=False, indent=1).encode("utf-8"))
    return len(written), skipped
