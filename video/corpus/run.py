"""One process's share of an extraction run: plan, decode ahead, encode, save, one manifest line each.

`extract_share` takes the tower as an argument (loading it, choosing the device and coordinating
processes is the command's job, `vlm_vision.commands.extract`). It decides for each of this process's
videos whether an existing output is kept (`video.corpus.plan`), decodes the others in background
workers (`video.corpus.decode_jobs`), encodes and saves each (`video.corpus.encode`), and appends one
manifest line per video as soon as it is settled (`video.corpus.report`), so a crash loses at
most the video in progress.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from video.budget import VideoLayout
from video.corpus.decode_jobs import DecodeJobs, decoded_stream
from video.corpus.encode import encode_isolated
from video.corpus.plan import Found, plan_outputs
from video.corpus.report import Outcome, append_line, manifest_path, record
from video.corpus.settings import ExtractSettings

__all__ = ["extract_share"]


def extract_share(found: list[Found], out: Path, tower: torch.nn.Module, config: ExtractSettings, *,
                  model_label: str, settings: dict[str, Any], layout: VideoLayout, load_kwargs: dict[str, Any],
                  rank: int, world: int, tag: str = "") -> tuple[list[Outcome], int, float]:
    """Extract this process's share of `found` into `out`.

    Args:
        found: every input video of the run (`video.corpus.plan.find_inputs`; the same list on
            every process).
        out: the output folder.
        tower: the tower to encode with, on its device.
        config: the run's settings (here: `overwrite`, `preview`, `workers`, `random_weights`, and
            those `video.corpus.encode` reads).
        model_label: what produced the tokens (recorded with them).
        settings: every setting that changes the tokens (`video.corpus.settings.token_settings`).
        layout: the model's video layout (the stride each frame count gets).
        load_kwargs: `video.load_video`'s arguments.
        rank, world: this process's index and the number of processes.
        tag: appended to the progress bar's label (" [RANDOM WEIGHTS]").

    Returns:
        (the outcome of each of this process's videos, frames encoded, seconds of the decode and
        encode loop).
    """
    manifest = manifest_path(out, rank, world)
    record_base = {"model": model_label, "random_weights": config.random_weights, "rank": rank}
    outcomes, todo = plan_outputs(found, out, settings, rank, world, overwrite=config.overwrite)
    for outcome in outcomes:
        append_line(manifest, {**record_base, **record(outcome)})

    on_cpu = tower.device.type == "cpu"
    jobs = DecodeJobs([video for video, _, _ in todo], load_kwargs=load_kwargs, preview=config.preview,
                      transform=tower.image_transform if on_cpu else None)
    frames_done = 0
    bar = tqdm(total=len(todo), unit="video", desc=f"extract{tag}", disable=rank != 0 or not todo, file=sys.stderr)
    start = time.perf_counter()
    for item in decoded_stream(jobs, config.workers, pin_memory=not on_cpu):
        video, output, why = todo[item.position]
        if item.error is not None:
            outcome = Outcome(video, output, "error", reason=item.error)
        else:
            outcome = encode_isolated(item, video, output, tower, config, model_label, settings, layout)
            frames_done += outcome.shape[0] if outcome.shape else 0
        if why is not None and outcome.status != "error":
            outcome.reason = f"extracted again: {why}"
        outcomes.append(outcome)
        append_line(manifest, {**record_base, **record(outcome)})
        bar.update(1)
        bar.set_postfix_str(f"{frames_done / max(time.perf_counter() - start, 1e-9):.1f} frames/s")
    bar.close()
    return outcomes, frames_done, time.perf_counter() - start
