"""What a training run would make of a data spec, before the run (`vlm-vision data-stats DATA`).

    vlm-vision data-stats mixture.yaml --llm LLM --tower TOWER --num-frames 32 --max-length 8192

Runs the scan training runs (same store, same cache: pass the run's `--output-dir` and `vlm-vision
train` reads the result instead of scanning again) and reports records, kept and skipped by reason,
modality counts, how many sequences are cut to `max_length`, the token-length histogram (saved as
`token_lengths.png`) and the tokens of one epoch. Everything also goes to `data_stats.json`.
No LLM weights are loaded: the tokenizer and the tower's shape are all the scan needs.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from video.atomic_files import write_atomic
from vlm_vision.errors import InputError

__all__ = ["DataStatsSettings", "data_stats", "histogram_png", "summary"]

KIND_NAMES = {0: "text", 1: "image", 2: "video"}


@dataclass(frozen=True)
class DataStatsSettings:
    """The training settings a scan depends on (`vlm_vision.TrainConfig`'s fields of the same names)."""

    data: str
    llm: str
    tower: str
    output_dir: str = "data-stats"
    num_frames: int = 32
    max_length: int | None = None
    pool_stride: int = 2
    media_root: str | None = None
    image_folder: str | None = None
    video_folder: str | None = None
    seed: int = 0
    workers: int = 1
    bins: int = 40


def _visual(settings: DataStatsSettings) -> tuple[Any, Any, int, str]:
    """(tokenizer, VisualSpec, max_length, where max_length came from), without the LLM's weights."""
    from transformers import AutoConfig  # lazy: heavy imports stay out of `--help`

    from vlm_vision.model.processor import VisionLanguageProcessor  # lazy: as above
    from vlm_vision.model.tower import CLIPVisionTower  # lazy: as above
    from vlm_vision.training.config import TrainConfig  # lazy: as above
    from vlm_vision.training.setup import llm_context, resolve_max_length, scan_frames, visual_spec  # lazy: as above
    from vlm_vision.model.llm import load_tokenizer  # lazy: as above

    config = TrainConfig(llm=settings.llm, tower=settings.tower, data=settings.data, output_dir=settings.output_dir,
                         num_frames=settings.num_frames, pool_stride=settings.pool_stride)
    try:
        tokenizer = load_tokenizer(settings.llm)
        context = llm_context(AutoConfig.from_pretrained(settings.llm), tokenizer)
    except (OSError, ValueError) as e:
        raise InputError("cannot load the LLM's tokenizer and config", settings.llm,
                         "a local model folder or a Hub id in the cache", hint=str(e).splitlines()[0]) from e
    try:
        tower = CLIPVisionTower.from_pretrained(settings.tower, select_layer=config.select_layer)
    except (OSError, ValueError) as e:
        raise InputError("cannot load the vision tower", settings.tower, "a CLIP vision model folder or Hub id",
                         hint=str(e).splitlines()[0]) from e
    processor = VisionLanguageProcessor(tokenizer, tower.image_transform, num_frames=config.num_frames,
                                        pool_stride=config.pool_stride, grid=tower.grid_size,
                                        video_newline=config.video_newline, image_tokens=tower.num_patches,
                                        pool_mode=config.pool_mode)
    shape = _ModelShape(tower, config)
    frames = scan_frames(config, processor)
    visual = visual_spec(shape, processor, frames)
    max_length, source = resolve_max_length(settings.max_length, context, visual.video_tokens(frames))
    return tokenizer, visual, max_length, source


class _ModelShape:
    """What `visual_spec` reads from a model, from the tower and the settings (no LLM)."""

    def __init__(self, tower: Any, config: Any):
        from video.budget import VideoLayout  # lazy: as in `_visual`

        self.tower, self.image_grid_pinpoints, self.anyres_convention = tower, None, config.anyres_convention
        self.video_layout = VideoLayout(grid=tuple(tower.grid_size), pool_stride=config.pool_stride,
                                        pool_mode=config.pool_mode, newline=config.video_newline)
        self.pooled_grid = self.video_layout.pooled_grid(config.pool_stride)
        self.image_tokens = tower.num_patches


def data_stats(settings: DataStatsSettings) -> dict[str, Any]:
    """Scan a data spec as training would and gather the figures (see the module docstring).

    Raises:
        InputError: for a data spec, tokenizer or tower that cannot be read.
    """
    from vlm_vision.data.formats import MediaRoots  # lazy: the scan's imports are heavy
    from vlm_vision.data.scan import load_training_data  # lazy: as above

    tokenizer, visual, max_length, source = _visual(settings)
    out = Path(settings.output_dir)
    roots = MediaRoots(*(Path(p).absolute() if p else None for p in (settings.media_root, settings.image_folder,
                                                                     settings.video_folder)))
    try:
        data = load_training_data(settings.data, roots, tokenizer, visual, max_length, seed=settings.seed,
                                  cache_dir=out / "data-scan", workers=max(1, settings.workers))
    except FileNotFoundError as e:
        raise InputError("data file not found", settings.data, "an existing .json/.jsonl file, a prefix{a,b}.json "
                                                                "pattern or a .yaml mixture", hint=str(e)) from e
    except ValueError as e:
        raise InputError("data spec cannot be read", settings.data, "a JSON list or JSONL of records, or a "
                                                                    "LLaVA-NeXT mixture", hint=str(e)) from e
    lengths = data.lengths.astype(np.int64)
    counts = np.bincount(data.kinds, minlength=3)
    stats = {
        "data": settings.data, "max_length": max_length, "max_length_from": source, "frames": visual.num_frames,
        "records": len(lengths) + len(data.skipped), "kept": len(lengths), "skipped": len(data.skipped),
        "skipped_by_reason": dict(Counter(s.reason.split(":")[0] for s in data.skipped).most_common()),
        "modalities": {KIND_NAMES[k]: int(counts[k]) for k in range(3)},
        "cached_token_files": int(np.count_nonzero(data.cached)) if data.cached is not None else 0,
        "cut_to_max_length": int(np.count_nonzero(lengths == max_length)),
        "tokens_per_epoch": int(lengths.sum()),
        "length": ({"min": int(lengths.min()), "median": float(np.median(lengths)), "mean": float(lengths.mean()),
                    "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())} if len(lengths) else {}),
        "scan": "read from the cache" if data.cache_hit else "computed",
    }
    out.mkdir(parents=True, exist_ok=True)
    if len(lengths):
        histogram_png(lengths, out / "token_lengths.png", bins=settings.bins, max_length=max_length)
        stats["histogram"] = str(out / "token_lengths.png")
    write_atomic(out / "data_stats.json", json.dumps(stats, indent=1).encode())  # whole, or absent (Ctrl-C)
    return stats


def summary(stats: dict[str, Any]) -> str:
    """The figures as a few printed lines."""
    lines = [f"{stats['data']}: {stats['records']:,} records, {stats['kept']:,} kept, {stats['skipped']:,} skipped "
             f"(scan {stats['scan']})"]
    for reason, n in stats["skipped_by_reason"].items():
        lines.append(f"  skipped {n:>8,}  {reason}")
    lines.append("  kept by modality: " + ", ".join(f"{k} {v:,}" for k, v in stats["modalities"].items()))
    if stats["length"]:
        ln = stats["length"]
        lines.append(f"  tokens per record: min {ln['min']:,}, median {ln['median']:,.0f}, p95 {ln['p95']:,.0f}, "
                     f"max {ln['max']:,} (max_length {stats['max_length']:,}, {stats['max_length_from']}; "
                     f"{stats['cut_to_max_length']:,} cut to it)")
    lines.append(f"  tokens per epoch: {stats['tokens_per_epoch']:,}")
    if "histogram" in stats:
        lines.append(f"  histogram: {stats['histogram']}")
    return "\n".join(lines)


def histogram_png(lengths: np.ndarray, path: Path, *, bins: int = 40, max_length: int | None = None) -> Path:
    """Draw the token-length histogram as a PNG (bars, axis labels, the max_length mark) with PIL."""
    from PIL import Image, ImageDraw  # lazy: only this picture needs it

    top = max(int(lengths.max()), max_length or 0, 1)
    counts, edges = np.histogram(lengths, bins=bins, range=(0, top))
    width, height, left, bottom, pad = 900, 420, 70, 50, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_w, plot_h = width - left - pad, height - bottom - pad
    peak = max(int(counts.max()), 1)
    bar = plot_w / bins
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        draw.rectangle([left + i * bar + 1, height - bottom - h, left + (i + 1) * bar - 1, height - bottom],
                       fill=(70, 120, 190))
    draw.line([left, height - bottom, width - pad, height - bottom], fill="black")
    draw.line([left, pad, left, height - bottom], fill="black")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + frac * plot_w
        draw.text((x - 15, height - bottom + 5), f"{edges[0] + frac * (edges[-1] - edges[0]):,.0f}", fill="black")
    draw.text((5, pad), f"{peak:,}", fill="black")
    draw.text((5, height - bottom - 10), "0", fill="black")
    draw.text((left + plot_w / 2 - 120, height - 20), f"tokens per record ({len(lengths):,} records)", fill="black")
    if max_length:
        x = left + plot_w * max_length / top
        draw.line([x, pad, x, height - bottom], fill=(200, 40, 40), width=2)
        draw.text((x - 80, pad), f"max_length {max_length:,}", fill=(200, 40, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = io.BytesIO()
    image.save(data, format="PNG")
    write_atomic(path, data.getvalue())  # whole, or absent (Ctrl-C)
    return path
