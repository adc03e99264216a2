"""Cached video tokens must come from this run's tower and settings.

A `.safetensors` token file from `vlm-vision extract` stands in for decoding and the tower. It is
only a stand-in when it holds what this run's tower would have produced: the same weights (not
random ones, not another checkpoint's), the same layer, the same pooling, the same frames. Each
file records those (`video.extract`, `video.provenance`); `check_cached_tokens` compares every
cached file a dataset uses with the run before training starts and refuses the first that
differs, naming the field and both values. `TrainConfig.accept_foreign_tokens` accepts them
anyway, with a warning.

Weights are compared by `video.provenance.weights_fingerprint`, which hashes the weights rounded
to bfloat16 after the dtype they were loaded in: a float32 run recognises the tokens a bfloat16
extraction of the same checkpoint made. A file written without a fingerprint (by an older
version, or by `save_video_tokens` alone) cannot be checked for its weights: it trains, with a
warning that says how many such files there are.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch

from video.extract import read_token_header
from video.provenance import describe_differences, differences, weights_fingerprint
from video.tower_pooling import DTYPES
from vlm_vision.data.formats import Record

__all__ = ["ForeignTokens", "check_cached_tokens", "expected_settings"]

class ForeignTokens(ValueError):
    """Cached tokens made with other weights or settings than this run's."""


def expected_settings(tower: torch.nn.Module, *, num_frames: int | None, fps: float | None, pool_stride: int,
                      pool_mode: str, max_video_tokens: int | None = None) -> dict[str, Any]:
    """What a cached token file must record to stand in for this run's decoding and tower.

    `num_frames` is the frame count T every video gets (uniform sampling); None with `fps`
    sampling, where T depends on each video's length and the recorded `fps` is compared instead.
    Under a token budget (`max_video_tokens`) each file is pooled at the stride its frame count
    allows (`vlm-vision extract --max-video-tokens`): the budget and the base stride are compared.
    """
    expected = {"random_weights": False, "layer": int(tower.select_layer), "pool_mode": pool_mode, "fps": fps,
                "sampling": "exact", "partial": False}
    if max_video_tokens is None:
        expected["pool_stride"] = pool_stride
    else:
        expected.update(base_pool_stride=pool_stride, max_video_tokens=max_video_tokens)
    if num_frames is not None:
        expected["frames"] = num_frames
    return expected


def check_cached_tokens(records: Iterable[Record], tower: torch.nn.Module, *, num_frames: int | None,
                        fps: float | None, pool_stride: int, pool_mode: str, max_video_tokens: int | None = None,
                        accept: bool = False) -> None:
    """Refuse cached token files whose metadata disagree with this run.

    Args:
        records: the dataset's records (any iterable: a generator reads them one at a time); those
            with cached videos are checked, each file once.
        tower: the run's tower (its layer and weights).
        num_frames, fps, pool_stride, pool_mode, max_video_tokens: the run's video settings
            (`expected_settings`).
        accept: warn instead of raising (`TrainConfig.accept_foreign_tokens`).

    Raises:
        ForeignTokens: naming the first file that differs, each differing field with both values,
            and how many files differ.
    """
    expected = expected_settings(tower, num_frames=num_frames, fps=fps, pool_stride=pool_stride, pool_mode=pool_mode,
                                 max_video_tokens=max_video_tokens)
    paths = sorted({str(p) for r in records for p in r.cached_paths})  # one entry per token file, not per record
    fingerprints: dict[str, str] = {}  # the run's tower's fingerprint, per dtype a file was made in
    foreign, unchecked, first = 0, 0, None
    for path in paths:
        recorded = _recorded(path)
        differ = differences(recorded, expected)
        if "weights_fingerprint" in recorded:
            dtype = recorded.get("dtype", "float32")
            if dtype not in fingerprints:
                fingerprints[dtype] = weights_fingerprint(tower, loaded_dtype=DTYPES.get(dtype))
            differ.update(differences(recorded, {"weights_fingerprint": fingerprints[dtype]}))
        elif not recorded.get("random_weights"):
            unchecked += 1
        if differ:
            foreign += 1
            first = first or (path, differ)
    if unchecked:
        warnings.warn(f"{unchecked} of {len(paths)} cached token files do not record the weights that made them "
                      f"(written by an older version, or by save_video_tokens alone): their tower cannot be "
                      f"checked against this run's", stacklevel=2)
    if first is None:
        return
    path, differ = first
    sampled = f"--fps {fps}" if num_frames is None else f"--num-frames {num_frames}"
    message = (f"cached tokens {path} were not made by this run's tower and settings ({describe_differences(differ)})"
               f"; {foreign} of {len(paths)} cached files differ. Extract them again with this run's tower "
               f"(`vlm-vision extract --model TOWER {sampled} --pool-stride {pool_stride} --pool-mode "
               f"{pool_mode}`), or set accept_foreign_tokens=True (--accept-foreign-tokens) to train on them "
               f"anyway")
    if not accept:
        raise ForeignTokens(message)
    warnings.warn(f"accept_foreign_tokens: training on them anyway: {message}", stacklevel=2)


def _recorded(path: str) -> dict[str, Any]:
    """A token file's metadata, with `frames` (T, from the tensor's shape) added."""
    header = read_token_header(path)
    recorded = {**header.metadata, "frames": int(header.shape[0])}
    recorded.setdefault("fps", None)  # a library-written file: uniform sampling
    return recorded
