"""The data of `vlm-vision clip-train`: image-text or video-text pairs, read, split and decoded.

A data file is a JSON list or JSONL of {"image" or "video": path, "caption": text}. Records with a
missing caption or media file are dropped when the file is read (each with its reason); media that
fail to decode become None in their batch and are dropped there, with the reason kept in
`PairDataset.failed`, so that bad samples never stop a run.

A video is one item of the batch: its sampled frames are stacked like images, and
`frame_counts` says how many rows of `pixel_values` each item owns.
Shapes: B pairs, T frames, L tokens, S image side.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from video.clip import VideoDecodeError
from video.decode import load_video
from vlm_vision.errors import InputError
from vlm_vision.model.transforms import CLIPImageTransform
from vlm_vision.model.zero_shot import tokenize

__all__ = ["MEDIA_KINDS", "Pair", "PairDataset", "pair_dataset", "read_pairs", "split_pairs"]

MEDIA_KINDS = ("image", "video")


@dataclass(frozen=True)
class Pair:
    """One training example: a media file and its caption."""

    path: Path
    kind: str  # "image" or "video"
    caption: str



def read_pairs(data: str | os.PathLike, media_root: str | os.PathLike) -> tuple[list[Pair], list[str]]:
    """Read the pairs of a JSON or JSONL file, dropping (and explaining) the bad records.

    Args:
        data: a JSON file holding a list of records, or a JSONL file with one record per line.
            A record is {"image": path, "caption": text} or {"video": path, "caption": text}.
        media_root: the folder the media paths are relative to (absolute paths are kept).

    Returns:
        (pairs, skipped): the usable pairs, and one line per dropped record saying why.

    Raises:
        InputError: if `data` or `media_root` does not exist, or a .json file is not valid JSON or not a list.
    """
    data, media_root = Path(data), Path(media_root)
    if not data.is_file():
        raise InputError("data file not found", data, "an existing .json or .jsonl file of pairs")
    if not media_root.is_dir():
        raise InputError("media root is not a folder", media_root, "an existing folder that the media paths are "
                         "relative to")
    text = data.read_text(encoding="utf-8")
    records: list[tuple[str, Any]] = []
    skipped: list[str] = []
    if data.suffix == ".json":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError("not valid JSON", data, f"a JSON list of records ({e}); use .jsonl for one record per "
                             f"line") from None
        if not isinstance(parsed, list):
            raise InputError("not a JSON list", data, f"{data} must hold a JSON list of records, got a "
                             f"{type(parsed).__name__}")
        records = [(f"record {i}", r) for i, r in enumerate(parsed)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as e:
                skipped.append(f"line {number}: invalid JSON ({e.msg})")
    pairs = []
    for where, record in records:
        pair, reason = _parse_record(record, media_root)
        if pair is None:
            skipped.append(f"{where}: {reason}")
        else:
            pairs.append(pair)
    return pairs, skipped


def _parse_record(record: Any, media_root: Path) -> tuple[Pair | None, str]:
    if not isinstance(record, dict):
        return None, f"expected an object, got {type(record).__name__}"
    kinds = [k for k in MEDIA_KINDS if k in record]
    if len(kinds) != 1:
        return None, f"needs exactly one of 'image' or 'video', has keys {sorted(record)}"
    caption = record.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        return None, f"caption must be a non-empty string, got {caption!r}"
    path = media_root / str(record[kinds[0]])
    if not path.is_file():
        return None, f"{kinds[0]} file not found: {path}"
    return Pair(path, kinds[0], caption), ""


def split_pairs(pairs: Sequence[Pair], eval_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Shuffle with `seed` and hold out ceil(eval_fraction x N) pairs: (train, eval).

    Raises:
        ValueError: if the fraction is outside [0, 1) or leaves no training pair.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_eval = math.ceil(eval_fraction * len(order))
    if n_eval >= len(order):
        raise InputError("too few pairs", f"--eval-fraction {eval_fraction}", f"{len(order)} usable pairs leave "
                         f"none for training with eval_fraction={eval_fraction}")
    return order[n_eval:], order[:n_eval]


class PairDataset(torch.utils.data.Dataset):
    """Decoded pixels and pre-tokenized captions; a sample that fails to decode becomes None."""

    def __init__(self, pairs: Sequence[Pair], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 transform: CLIPImageTransform, num_frames: int) -> None:
        self.pairs, self.input_ids, self.attention_mask = list(pairs), input_ids, attention_mask
        self.transform, self.num_frames = transform, num_frames
        self.failed: dict[Path, str] = {}  # path -> why it could not be decoded

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        pair = self.pairs[i]
        try:
            return i, self._pixels(pair)  # (T, 3, S, S)
        except (ValueError, OSError, VideoDecodeError) as e:  # an image or a video that does not decode
            self.failed[pair.path] = f"{pair.kind} cannot be decoded: {e}"
            return i, None

    def _pixels(self, pair: Pair) -> torch.Tensor:
        if pair.kind == "image":
            return self.transform(pair.path)  # (1, 3, S, S)
        scale = self.transform.frame_scale() if hasattr(self.transform, "frame_scale") else None
        clip = load_video(pair.path, num_frames=self.num_frames, frame_scale=scale)
        return self.transform(clip.frames)  # (T, 3, S, S)

    def collate(self, items: list[tuple[int, torch.Tensor | None]]) -> dict[str, Any]:
        """A batch of the items that decoded: frames stacked, captions cut to the longest one."""
        ok = [(i, px) for i, px in items if px is not None]
        index = torch.tensor([i for i, _ in ok], dtype=torch.long)
        mask = self.attention_mask[index]  # (B, L_max)
        length = int(mask.sum(1).max()) if len(ok) else 1  # right padding: trailing columns are all pad
        return {
            "pixel_values": torch.cat([px for _, px in ok]) if ok else torch.empty(0),  # (sum T, 3, S, S)
            "frame_counts": [px.shape[0] for _, px in ok],
            "input_ids": self.input_ids[index, :length],  # (B, L)
            "attention_mask": mask[:, :length],  # (B, L)
        }


def pair_dataset(pairs: Sequence[Pair], tokenizer: Any, max_len: int, transform: CLIPImageTransform,
                 num_frames: int) -> PairDataset:
    """A `PairDataset` of `pairs`, every caption tokenized once up front (to `max_len` tokens)."""
    if pairs:
        batch = tokenize(tokenizer, [p.caption for p in pairs], max_len)  # warns once about long captions
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (N, L)
    else:
        ids = mask = torch.zeros(0, 1, dtype=torch.long)
    return PairDataset(pairs, ids, mask, transform, num_frames)
