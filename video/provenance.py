"""Where a token file came from: the identity of its source video and of the weights that encoded it.

An output is only as trustworthy as the claim that it belongs to its video and to this run's
settings. A file name proves neither: two folders can hold different `clip.mp4`s, a video can be
replaced in place, and a tower can be swapped for another of the same name. So every output
records

- the source: resolved path, size, modification time (ns), and a content fingerprint, a SHA-256 of
  the size and the first and last MiB (reads 2 MiB at most, so a corpus of long videos is checked
  in seconds; it changes when a download is completed, cut or replaced, which is what it is for);
- the weights: a SHA-256 over the names, shapes and bytes of the tower's state (parameters and
  buffers), floating-point values rounded to bfloat16 first (`weights_fingerprint`). The rounding
  makes the fingerprint independent of the dtype the weights were loaded in (recorded beside it),
  so that a float32 training run recognises a bfloat16 extraction of the same checkpoint; two
  checkpoints that differ only below bfloat16's precision share a fingerprint.

A resumed run keeps an output only when all of that and every setting that changes its tokens
match (`differences`). One of them is how large the frames left the decoder (`frame_scale`:
"full", or e.g. "crop:336", `video.frame_scale`): tokens of full-resolution frames are never
taken for those of frames the decoder resized, or the other way round. Files written before the
setting existed hold full-resolution tokens and say nothing: a missing `frame_scale` reads "full".
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from video.frame_scale import FULL_RESOLUTION

__all__ = ["describe_differences", "differences", "source_fingerprint", "source_identity", "weights_fingerprint"]

FINGERPRINT_SPAN = 1 << 20  # bytes read from each end of a file
SOURCE_KEYS = ("source_path", "source_size", "source_mtime_ns", "source_fingerprint")
# what a key missing from a file stands for: the only value files written before the key existed can hold
RECORDED_BEFORE = {"frame_scale": FULL_RESOLUTION}


def source_fingerprint(path: str | os.PathLike, size: int | None = None) -> str:
    """SHA-256 (hex) of the file's size and its first and last `FINGERPRINT_SPAN` bytes.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size if size is None else size
        digest.update(size.to_bytes(8, "big"))
        digest.update(f.read(FINGERPRINT_SPAN))
        if size > FINGERPRINT_SPAN:
            f.seek(max(size - FINGERPRINT_SPAN, FINGERPRINT_SPAN))
            digest.update(f.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


def source_identity(path: str | os.PathLike) -> dict[str, Any]:
    """{source_path, source_size, source_mtime_ns, source_fingerprint} of a video file.

    Raises:
        OSError: the file is missing or unreadable (FileNotFoundError, PermissionError, ...).
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return {"source_path": str(resolved), "source_size": int(stat.st_size), "source_mtime_ns": int(stat.st_mtime_ns),
            "source_fingerprint": source_fingerprint(resolved, stat.st_size)}


def weights_fingerprint(module: torch.nn.Module, loaded_dtype: torch.dtype | None = None) -> str:
    """SHA-256 (hex) over every parameter's and buffer's name, shape and bytes, in name order.

    Floating-point tensors are cast to `loaded_dtype` (when given: the dtype another process loaded
    the same weights in) and then rounded to bfloat16, so the same checkpoint gives the same
    fingerprint in float32 and in bfloat16. Other tensors (integer buffers) are hashed as they are.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)  # (numel,)
        if flat.is_floating_point():
            flat = flat.to(loaded_dtype or flat.dtype).to(torch.bfloat16)
        flat = flat.contiguous().cpu()
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())  # raw bytes (numpy has no bfloat16)
    return digest.hexdigest()


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (recorded value, current value)} for every key of `current` whose values differ.

    A key missing from `recorded` (a file from an older version) counts as a difference, with
    recorded value None; except a key of `RECORDED_BEFORE`, which then has the value older
    versions always wrote with (`frame_scale`: "full").
    """
    recorded = {**RECORDED_BEFORE, **recorded}
    return {k: (recorded.get(k), v) for k, v in current.items()
            if k not in recorded or _normal(recorded[k]) != _normal(v)}


def describe_differences(differ: dict[str, tuple[Any, Any]]) -> str:
    """'key: old there, new now; ...' for a `differences` result."""
    return "; ".join(f"{k}: {_short(old)} there, {_short(new)} now" for k, (old, new) in differ.items())


def _normal(value: Any) -> Any:
    """JSON round trips turn tuples into lists; compare them as equal."""
    return list(value) if isinstance(value, tuple) else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:38] + "..." + text[-38:]
