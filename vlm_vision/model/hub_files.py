"""Where a tower's files are: a local file or folder, or a Hub id's snapshot in the HF cache.

A name that exists on disk is used as is. Anything else that looks like `org/name` is a Hub id:
with `HF_HUB_OFFLINE=1` its cached snapshot folder is found without touching the network (any
cached anchor file locates it), otherwise the snapshot is downloaded (safetensors preferred).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download, try_to_load_from_cache

from projector.weight_files import HF_WEIGHT_FILES, WEIGHT_SUFFIXES

__all__ = ["HUB_ID", "OPEN_CLIP_WEIGHT_FILES", "cached_hub_file", "resolve_weights"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A local file or folder, or the snapshot folder of a Hub id in the HF cache.

    Raises:
        FileNotFoundError: for a path that does not exist, or a Hub id that is not cached offline.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if not HUB_ID.match(name) or name.endswith(WEIGHT_SUFFIXES + (".json",)):
        raise FileNotFoundError(f"no such file or folder: {name!r}")
    return _hub_snapshot(name)


def cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """The cached copy of one file of a Hub repo, or None (never downloads)."""
    cached = try_to_load_from_cache(repo_id, filename)
    return Path(cached) if isinstance(cached, str) else None


def _hub_snapshot(repo_id: str) -> Path:
    if constants.HF_HUB_OFFLINE:
        # Any cached anchor file locates the snapshot folder; no network, no completeness check.
        for anchor in ("config.json", "open_clip_config.json") + HF_WEIGHT_FILES + OPEN_CLIP_WEIGHT_FILES:
            cached = cached_hub_file(repo_id, anchor)
            if cached is not None:
                return cached.parent
        raise FileNotFoundError(f"{repo_id!r} is not a local path, and the Hub model is not in the HF cache at "
                                f"{constants.HF_HUB_CACHE} (HF_HUB_OFFLINE=1, so nothing is downloaded). Download it "
                                f"once with `hf download {repo_id}` while online, or pass a local path")
    # Prefer safetensors; fetch .bin weights only when the repo has no safetensors.
    folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    if not any(p.suffix == ".safetensors" for p in folder.iterdir()):
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.bin", "*.pt", "*.pth"]))
    return folder
