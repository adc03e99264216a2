"""One decoded video -> its token file: the tower (out of memory retried with smaller batches), then
the files (the contact sheet first; the tokens, written last, mark the video done).

The run's `ExtractSettings` give the pooling (`pool_stride`, `pool_mode`), the tower's `batch_size`,
and what is recorded with the tokens (`random_weights`, `sampling`).

Shapes: T frames, N' pooled tokens per frame, D tower width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from video.atomic_files import write_atomic
from video.budget import VideoLayout
from video.corpus.decode_jobs import Decoded
from video.extract import save_video_tokens, tokens_for_clip
from video.corpus.report import Outcome
from video.corpus.settings import ExtractSettings
from video.provenance import source_identity
from video.tower_pooling import encode_frames, encode_pixels

__all__ = ["encode_and_save", "encode_isolated", "encode_with_retry"]


def encode_isolated(item: Decoded, video: Path, output: Path, tower: torch.nn.Module, config: ExtractSettings,
                    model_label: str, settings: dict, layout: VideoLayout | None = None) -> Outcome:
    """`encode_and_save`, with any exception of this video turned into an "error" outcome.

    KeyboardInterrupt and SystemExit are not exceptions of one video: they stop the run (a
    temporary file being written is removed by `write_atomic`).
    """
    try:
        return encode_and_save(item, video, output, tower, config, model_label, settings, layout)
    except Exception as e:
        return Outcome(video, output, "error", reason=f"{type(e).__name__}: {e}")


def encode_and_save(item: Decoded, video: Path, output: Path, tower: torch.nn.Module, config: ExtractSettings,
                    model_label: str, settings: dict, layout: VideoLayout | None = None) -> Outcome:
    """Tower + pooling for one decoded video, then its files (preview first: the tokens mark it done).

    The stride is the one the model's token budget gives this frame count (`layout.stride_for`)."""
    clip = item.clip
    stride = layout.stride_for(len(clip.indices)) if layout is not None else config.pool_stride
    tokens, batch_size, retries = encode_with_retry(item, tower, stride, config.pool_mode, config.batch_size)
    result = tokens_for_clip(clip, tokens, tower, pool_stride=stride, pool_mode=config.pool_mode,
                             model=model_label, random_weights=config.random_weights, sampling=config.sampling)
    if item.sheet is not None:
        write_atomic(output.with_suffix(".png"), item.sheet)
    identity = item.identity or source_identity(video)
    recorded = {k: v for k, v in {**settings, **identity}.items() if k not in result.metadata()}
    save_video_tokens(result, output, extra=recorded)
    extra: dict[str, Any] = {"source_fingerprint": identity["source_fingerprint"]}
    if retries:
        extra["out_of_memory_retries"] = retries
        extra["batch_size"] = batch_size
    if clip.partial:
        extra.update(declared_frames=clip.declared_frames, decoded_frames=clip.num_total_frames)
    return Outcome(video, output, "partial" if clip.partial else "ok", shape=tuple(tokens.shape), extra=extra)


def encode_with_retry(item: Decoded, tower: torch.nn.Module, pool_stride: int, pool_mode: str,
                      batch_size: int | None) -> tuple[torch.Tensor, int, int]:
    """(tokens float[T, N', D], the batch size that worked, retries): out of memory halves the batch.

    Frames go to the tower's device and are preprocessed there one batch at a time (unless the
    decoding workers preprocessed them already). Raises the last torch.OutOfMemoryError when even
    one frame at a time does not fit.
    """
    t = item.pixels.shape[0] if item.pixels is not None else item.clip.frames.shape[0]
    size, retries = max(1, batch_size or t), 0
    while True:
        try:
            return _encode_batches(item, tower, pool_stride, pool_mode, size), size, retries
        except torch.OutOfMemoryError:
            if size == 1:
                raise
        size, retries = max(1, size // 2), retries + 1
        if tower.device.type == "cuda":
            torch.cuda.empty_cache()


def _encode_batches(item: Decoded, tower: torch.nn.Module, pool_stride: int, pool_mode: str,
                    size: int) -> torch.Tensor:
    if item.pixels is not None:
        return encode_pixels(tower, item.pixels, stride=pool_stride, mode=pool_mode, batch_size=size)  # (T, N', D)
    return encode_frames(tower, item.clip.frames, stride=pool_stride, mode=pool_mode, batch_size=size)  # (T, N', D)
