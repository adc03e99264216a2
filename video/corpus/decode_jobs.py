"""Decoding a work list of videos in background processes that stay ahead of the tower.

Decoding is the bottleneck of extraction. `decoded_stream` runs `DecodeJobs` in a prefetching
`DataLoader` with `workers` processes (0 decodes in the caller's process), one video per item and
in order, so the tower does not wait while decoding keeps up. Each item is a `Decoded`: the clip
(uint8 frames, page-locked for an overlapping copy to the GPU), or, when the tower runs on the
CPU, the frames already preprocessed by the workers; any failure of one video comes back as its
`error`, never raised, so one bad file does not stop the others.

Shapes: T frames, H/W pixels, S tower input side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from video.corpus.contact_sheet import contact_sheet_png
from video.clip import VideoClip, VideoDecodeError
from video.decode import load_video
from video.provenance import source_identity

__all__ = ["DecodeJobs", "Decoded", "decoded_stream"]


@dataclasses.dataclass
class Decoded:
    """What a decoding worker hands to the main process for one video."""

    position: int
    identity: dict[str, Any] | None = None
    """The source's identity (`video.provenance.source_identity`), read just before decoding."""
    clip: VideoClip | None = None
    """The `VideoClip`; its frames are dropped when `pixels` carries them already preprocessed."""
    pixels: torch.Tensor | None = None
    """float32[T, 3, S, S] when the workers preprocess (tower on the CPU)."""
    sheet: bytes | None = None
    """The contact-sheet PNG, with --preview."""
    error: str | None = None

    def pin_memory(self) -> "Decoded":
        """Page-lock the frames so the copy to the GPU can overlap (called by the DataLoader)."""
        if self.clip is not None and self.clip.frames.numel():
            self.clip = dataclasses.replace(self.clip, frames=self.clip.frames.pin_memory())
        return self


class DecodeJobs(torch.utils.data.Dataset):
    """Decodes video `i` of the work list; run by the DataLoader's worker processes.

    Args:
        videos: the work list.
        load_kwargs: `video.load_video`'s keyword arguments.
        transform: uint8[T, H, W, 3] -> float[T, 3, S, S] (the tower's `image_transform`) to
            preprocess in the worker, or None to hand over uint8 frames.
        preview: also render each clip's contact sheet (`video.corpus.contact_sheet`).
        identities: each video's source identity when already read, else None (read here).
    """

    def __init__(self, videos: list[Path], *, load_kwargs: dict[str, Any],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, preview: bool = False,
                 identities: list[dict | None] | None = None):
        self.videos = videos
        self.identities = identities or [None] * len(videos)
        self.load_kwargs = load_kwargs
        self.transform = transform
        self.preview = preview

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, position: int) -> Decoded:
        """Decode one video; any failure comes back as `error` ("Type: message"), never raised."""
        try:
            identity = self.identities[position] or source_identity(self.videos[position])
            clip = load_video(self.videos[position], **self.load_kwargs)
            sheet = contact_sheet_png(clip.frames, clip.presentation_times) if self.preview else None
            if self.transform is None:
                return Decoded(position, identity, clip=clip, sheet=sheet)
            pixels = self.transform(clip.frames)  # (T, 3, S, S)
        except VideoDecodeError as e:
            return Decoded(position, error=e.reason)
        except FileNotFoundError as e:
            return Decoded(position, error=f"no such file ({e.filename})")
        except Exception as e:  # anything else about this one video: recorded, the run goes on
            return Decoded(position, error=f"{type(e).__name__}: {e}")
        return Decoded(position, identity, clip=dataclasses.replace(clip, frames=clip.frames[:0]), pixels=pixels,
                       sheet=sheet)


def _collate_one(item: Decoded) -> Decoded:
    return item


def _worker_init(_: int) -> None:
    # Each worker decodes one video at a time; more threads per worker only oversubscribe the cores.
    torch.set_num_threads(1)


def decoded_stream(jobs: DecodeJobs, workers: int, *, pin_memory: bool) -> Iterator[Decoded]:
    """Yield `jobs` in order, decoded `workers` videos ahead of the consumer (inline with 0)."""
    if workers == 0:
        for i in range(len(jobs)):
            yield jobs[i]
        return
    loader = torch.utils.data.DataLoader(jobs, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_collate_one, worker_init_fn=_worker_init, prefetch_factor=2,
                                         pin_memory=pin_memory, persistent_workers=False)
    yield from loader
