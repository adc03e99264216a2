"""`vlm-vision extract`: per-frame pooled video tokens for one clip or a whole corpus.

Built for corpora that take hours, so that any interruption costs little:
  - one `.safetensors` per video, written to a temporary name and renamed into place, so an output
    that exists is complete; a re-run skips it (resume), `--overwrite` redoes it;
  - a video that cannot be decoded is recorded (`manifest.jsonl`, the final summary, a non-zero
    exit code) and the run goes on with the others;
  - decoding, the bottleneck, runs in `--workers` background processes that stay ahead of the
    tower (a prefetching `DataLoader`), so the tower does not wait while decoding keeps up. With
    the tower on the CPU the workers also preprocess; on a GPU frames travel as uint8 and are
    preprocessed there;
  - under `accelerate launch` process i of n takes inputs i, i+n, i+2n, ...: every output has
    exactly one writer. Each process appends to its own `manifest.rank<i>.jsonl`; the main process
    merges them into `manifest.jsonl` (also at the start of a run, after a crash).

Without downloaded weights the command stops and says how to get them or how to run with random
weights through the same architecture (`--random-weights`); random-weight outputs are labelled in
the progress bar, the summary, the manifest and each file's metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from video.extract import (
    check_pooling,
    encode_pixels,
    read_metadata,
    save_video_tokens,
    temporary_files,
    tokens_for_clip,
    write_atomic,
)

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts", ".flv",
                              ".wmv", ".3gp", ".ogv"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
DEFAULT_MODEL = "openai/clip-vit-large-patch14-336"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MANIFEST = "manifest.jsonl"
# Settings that must match for an existing output to count as done.
RESUME_KEYS = ("model", "layer", "pool_stride", "pool_mode", "random_weights", "sampling", "num_frames", "fps",
               "backend")


class WeightsUnavailable(RuntimeError):
    """The requested pretrained weights are not on this machine (and could not be downloaded)."""


# ----- arguments --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="video files, folders (searched recursively for videos), or .txt/.lst files listing "
                             "one path per line (relative paths are relative to the list file)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"Hub id, local folder or checkpoint of the CLIP tower (default {DEFAULT_MODEL}); "
                             "with --random-weights, the architecture (a variant name such as ViT-L/14@336, a "
                             "known Hub id, or a folder with config.json)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights through the real architecture (offline smoke runs and benchmarks; "
                             "the tokens carry no meaning and are labelled so)")
    parser.add_argument("--num-frames", type=_positive_int, default=32,
                        help="frames sampled uniformly per video (with --fps: the most frames kept)")
    parser.add_argument("--fps", type=_positive_float, default=None, help="sample about this many frames per second")
    parser.add_argument("--sampling", choices=("exact", "keyframe"), default="exact",
                        help="exact frames, or each target moved to the nearest keyframe (much faster decoding)")
    parser.add_argument("--backend", choices=("exact", "decord"), default="exact",
                        help="decoder: exact frames (PyAV, checked against the timestamps), or decord's get_batch "
                             "as LLaVA-NeXT-Video's loader (its pixels, wrong frames included, for parity)")
    parser.add_argument("--pool-stride", type=_positive_int, default=2, help="2 turns 24x24 patches into 144 tokens")
    parser.add_argument("--pool-mode", choices=("average", "max", "bilinear"), default="average")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: this process's accelerator, else the CPU)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="tower dtype")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="frames per tower call (default: all frames of a video at once)")
    parser.add_argument("--workers", type=_non_negative_int, default=2,
                        help="background decoding processes (0 decodes in the main process)")
    parser.add_argument("--overwrite", action="store_true", help="redo videos whose output already exists")
    parser.add_argument("--preview", action="store_true",
                        help="also write <name>.png, a contact sheet of the sampled frames with their timestamps")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


# ----- inputs and output names (pure functions of paths) ----------------------------------------

def find_videos(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand INPUTS into video paths, in order, each once.

    A folder contributes its files with a video extension (recursively, sorted); a .txt/.lst/.list
    file contributes the paths it lists (blank lines and lines starting with '#' skipped); anything
    else is taken as a video, even if it does not exist (it is then reported as an error).
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()))
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            lines = path.read_text(encoding="utf-8").splitlines()
            listed = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
            found.extend(find_videos(path.parent / p for p in listed))
        else:
            found.append(path)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_names(videos: list[Path]) -> list[str]:
    """A distinct output stem per video: the file's stem, or a longer name where stems collide.

    Videos that share a stem are named by their path relative to the group's common folder, with
    '__' for '/' and the extension kept (`a/clip.mp4`, `b/clip.mp4` -> `a__clip.mp4`,
    `b__clip.mp4`), so every name still reads as its video.
    """
    stems: dict[str, list[int]] = {}
    for i, v in enumerate(videos):
        stems.setdefault(v.stem, []).append(i)
    names = [v.stem for v in videos]
    for members in stems.values():
        if len(members) == 1:
            continue
        paths = [videos[i].resolve() for i in members]
        common = Path(os.path.commonpath([p.parent for p in paths]))
        for i, p in zip(members, paths):
            names[i] = "__".join(p.relative_to(common).parts)
    return names


def shard(items: list, process_index: int, num_processes: int) -> list:
    """Items i with i % num_processes == process_index: one writer per output across processes."""
    return items[process_index::num_processes]


# ----- the tower --------------------------------------------------------------------------------

def load_tower(model: str, *, random_weights: bool, device: torch.device, dtype: torch.dtype):
    """The tower to extract with, and the label stored with its tokens.

    Raises:
        WeightsUnavailable: when pretrained weights are asked for and are not on this machine.
        ValueError: with `random_weights`, when `model` does not name an architecture.
    """
    from vlm_vision import CLIPVisionTower

    if random_weights:
        variant, config = _architecture(model)
        tower = CLIPVisionTower.from_config(config)
        return tower.to(device=device, dtype=dtype), f"random:{variant}"
    try:
        tower = CLIPVisionTower.from_pretrained(model, dtype=dtype, device=device)
    except OSError as e:  # not found locally or in the HF cache (FileNotFoundError), or no network
        raise WeightsUnavailable(_unavailable_message(model, f"{type(e).__name__}: {e}")) from e
    return tower, model


def _architecture(model: str):
    """(variant label, CLIPVisionConfig) for --random-weights."""
    from transformers import CLIPVisionConfig

    from vlm_vision.configs import HUB_IDS, VARIANTS, vision_config

    if model in VARIANTS:
        return model, vision_config(model)
    by_hub_id = {hub_id: name for name, hub_id in HUB_IDS.items()}
    if model in by_hub_id:
        return by_hub_id[model], vision_config(by_hub_id[model])
    if (Path(model) / "config.json").is_file():
        return str(model), CLIPVisionConfig.from_pretrained(model)
    raise ValueError(f"--random-weights needs an architecture, got --model {model!r}: use a variant name "
                     f"{sorted(VARIANTS)}, one of the Hub ids {sorted(by_hub_id)}, or a folder with config.json")


def _unavailable_message(model: str, why: str) -> str:
    return (f"the weights of {model!r} are not available on this machine.\n"
            f"  Why: {why}\n"
            f"  To use them: download them once while online (`hf download {model}`), or pass --model with a "
            f"local folder or checkpoint file.\n"
            f"  To run offline anyway: add --random-weights, which runs the same architecture with random "
            f"weights; the tokens then have the right shapes but no meaning, and are labelled as random in the "
            f"output files, the manifest and the summary.")


def resolve_device(name: str | None) -> tuple[torch.device, int, int]:
    """(device, process index, number of processes), from --device and the accelerate launcher.

    Under `accelerate launch` (WORLD_SIZE > 1) each process uses its own accelerator.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        # Without CUDA (or with --device cpu) the processes talk over gloo on the CPU.
        state = PartialState(cpu=name == "cpu" or not torch.cuda.is_available())
        device = state.device if name is None or name == "cuda" else torch.device(name)
        return device, state.process_index, state.num_processes
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    return device, 0, 1


def _barrier(num_processes: int) -> None:
    if num_processes > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


# ----- decoding in background workers -----------------------------------------------------------

@dataclasses.dataclass
class Decoded:
    """What a decoding worker hands to the main process for one video."""

    position: int
    clip: Any = None
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
    """Decodes video `i` of the work list; run by the DataLoader's worker processes."""

    def __init__(self, videos: list[Path], *, load_kwargs: dict[str, Any], transform=None, preview: bool = False):
        self.videos = videos
        self.load_kwargs = load_kwargs
        self.transform = transform
        self.preview = preview

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, position: int) -> Decoded:
        from video.decode import VideoDecodeError, load_video

        try:
            clip = load_video(self.videos[position], **self.load_kwargs)
        except VideoDecodeError as e:
            return Decoded(position, error=e.reason)
        sheet = contact_sheet_png(clip.frames, clip.presentation_times) if self.preview else None
        if self.transform is None:
            return Decoded(position, clip=clip, sheet=sheet)
        pixels = self.transform(clip.frames)  # (T, 3, S, S)
        return Decoded(position, clip=dataclasses.replace(clip, frames=clip.frames[:0]), pixels=pixels, sheet=sheet)


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


# ----- preview ----------------------------------------------------------------------------------

SHEET_COLUMNS = 8
SHEET_THUMB_WIDTH = 192
SHEET_PAD = 4


def contact_sheet(frames: torch.Tensor, timestamps: list[float], *, columns: int = SHEET_COLUMNS,
                  thumb_width: int = SHEET_THUMB_WIDTH, pad: int = SHEET_PAD):
    """A grid of thumbnails of uint8[T, H, W, 3] frames, each labelled with its time in seconds.

    The sheet has min(T, columns) columns and ceil(T / columns) rows of `thumb_width` x
    round(thumb_width * H / W) thumbnails, `pad` pixels apart and from the border.

    Returns:
        A PIL RGB image.
    """
    from PIL import Image, ImageDraw, ImageFont

    t, h, w, _ = frames.shape
    thumb_h = max(1, round(thumb_width * h / w))
    cols = min(t, columns)
    rows = math.ceil(t / cols)
    sheet = Image.new("RGB", (cols * thumb_width + (cols + 1) * pad, rows * thumb_h + (rows + 1) * pad), (24, 24, 24))
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(sheet)
    for k in range(t):
        r, c = divmod(k, cols)
        x, y = pad + c * (thumb_width + pad), pad + r * (thumb_h + pad)
        thumb = Image.fromarray(frames[k].numpy()).resize((thumb_width, thumb_h), Image.Resampling.BILINEAR)
        sheet.paste(thumb, (x, y))
        label = f"{timestamps[k]:.2f}s"
        box = draw.textbbox((x + 3, y + 2), label, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((x + 3, y + 2), label, fill=(255, 255, 255), font=font)
    return sheet


def contact_sheet_png(frames: torch.Tensor, timestamps: list[float]) -> bytes:
    buffer = io.BytesIO()
    contact_sheet(frames, timestamps).save(buffer, format="PNG")
    return buffer.getvalue()


# ----- manifest ---------------------------------------------------------------------------------

def manifest_path(out: Path, process_index: int, num_processes: int) -> Path:
    return out / (MANIFEST if num_processes == 1 else f"manifest.rank{process_index}.jsonl")


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; opened and closed per line so a merge never races an open handle."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def merge_rank_manifests(out: Path) -> None:
    """Move the lines of every manifest.rank<i>.jsonl into manifest.jsonl (main process only)."""
    for part in sorted(out.glob("manifest.rank*.jsonl")):
        text = part.read_text(encoding="utf-8")
        if text:
            with open(out / MANIFEST, "a", encoding="utf-8") as f:
                f.write(text if text.endswith("\n") else text + "\n")
                f.flush()
                os.fsync(f.fileno())
        part.unlink()


# ----- the run ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    video: Path
    output: Path
    status: str  # "ok", "skipped-existing" or "error"
    reason: str | None = None
    shape: tuple[int, ...] | None = None


def run(args: argparse.Namespace) -> int:
    """Extract tokens for every input video; 0 when all succeeded (or were done), 1 otherwise."""
    t0 = time.perf_counter()
    device, rank, world = resolve_device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        merge_rank_manifests(out)  # lines left by an interrupted multi-process run
    _barrier(world)
    dtype = DTYPES[args.dtype]
    try:
        tower, model_label = load_tower(args.model, random_weights=args.random_weights, device=device, dtype=dtype)
    except WeightsUnavailable as e:
        print(f"vlm-vision extract: {e}", file=sys.stderr)
        return 2
    try:
        check_pooling(tower, args.pool_stride, args.pool_mode)
    except ValueError as e:
        print(f"vlm-vision extract: {args.model}: {e}", file=sys.stderr)
        return 2
    videos = find_videos(args.inputs)
    if not videos:
        print(f"vlm-vision extract: no videos found in {args.inputs} (extensions: {sorted(VIDEO_EXTENSIONS)})",
              file=sys.stderr)
        return 1
    names = output_names(videos)
    mine = shard(list(zip(videos, names)), rank, world)
    settings = {"model": model_label, "layer": int(tower.select_layer), "pool_stride": args.pool_stride,
                "pool_mode": args.pool_mode, "random_weights": args.random_weights, "sampling": args.sampling,
                "num_frames": args.num_frames, "fps": args.fps, "backend": args.backend}
    manifest = manifest_path(out, rank, world)
    record_base = {"model": model_label, "random_weights": args.random_weights, "rank": rank}
    tag = " [RANDOM WEIGHTS]" if args.random_weights else ""
    if rank == 0:
        print(f"vlm-vision extract: {_plural(len(videos), 'video')} -> {out} with {model_label}{tag} on {device} ({args.dtype}), "
              f"{args.num_frames} frames ({args.backend} decoding), pool {args.pool_mode} stride {args.pool_stride}"
              + (f", {world} processes" if world > 1 else ""), file=sys.stderr)

    outcomes, todo = _sort_out_existing(mine, out, settings, overwrite=args.overwrite)
    for outcome in outcomes:
        append_line(manifest, {**record_base, **_record(outcome)})

    load_kwargs = {"num_frames": args.num_frames, "fps": args.fps, "sampling": args.sampling,
                   "max_frames": args.num_frames if args.fps else None, "backend": args.backend}
    on_cpu = device.type == "cpu"
    jobs = DecodeJobs([v for v, _ in todo], load_kwargs=load_kwargs, preview=args.preview,
                      transform=tower.image_transform if on_cpu else None)
    frames_done = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="video", desc=f"extract{tag}", disable=rank != 0 or not todo, file=sys.stderr)
    start = time.perf_counter()
    for item in decoded_stream(jobs, args.workers, pin_memory=not on_cpu):
        video, output = todo[item.position]
        if item.error is not None:
            outcome = Outcome(video, output, "error", reason=item.error)
        else:
            outcome = _encode_and_save(item, video, output, tower, args, model_label, settings)
            frames_done += outcome.shape[0]
        outcomes.append(outcome)
        append_line(manifest, {**record_base, **_record(outcome)})
        bar.update(1)
        bar.set_postfix_str(f"{frames_done / max(time.perf_counter() - start, 1e-9):.1f} frames/s")
    bar.close()

    loop_seconds = time.perf_counter() - start
    _barrier(world)
    if rank == 0 and world > 1:
        merge_rank_manifests(out)
    _print_summary(outcomes, out, rank, world, tag, time.perf_counter() - t0, loop_seconds, frames_done)
    return 1 if any(o.status == "error" for o in outcomes) else 0


def _sort_out_existing(mine: list[tuple[Path, str]], out: Path, settings: dict[str, Any], *,
                       overwrite: bool) -> tuple[list[Outcome], list[tuple[Path, Path]]]:
    """(outcomes of videos done by an earlier run, (video, output) pairs still to do).

    Also removes the temporary files an interrupted run left for these outputs: this process is
    their only writer.
    """
    done, todo = [], []
    for video, name in mine:
        output = out / f"{name}.safetensors"
        for leftover in temporary_files(output) + temporary_files(output.with_suffix(".png")):
            leftover.unlink(missing_ok=True)
        if output.exists() and not overwrite:
            done.append(_existing(video, output, settings))
        else:
            todo.append((video, output))
    return done, todo


def _encode_and_save(item: Decoded, video: Path, output: Path, tower, args, model_label: str,
                     settings: dict) -> Outcome:
    """Tower + pooling for one decoded video, then its files (preview first: the tokens mark it done)."""
    clip = item.clip
    if item.pixels is not None:
        pixels = item.pixels
    else:
        frames = clip.frames.to(tower.device, non_blocking=True)  # (T, H, W, 3) uint8
        pixels = tower.image_transform(frames)  # (T, 3, S, S) on the tower's device
    tokens = encode_pixels(pixels, tower, pool_stride=args.pool_stride, pool_mode=args.pool_mode,
                           batch_size=args.batch_size)  # (T, N', D)
    result = tokens_for_clip(clip, tokens, tower, pool_stride=args.pool_stride, pool_mode=args.pool_mode,
                             model=model_label, random_weights=args.random_weights, sampling=args.sampling)
    if item.sheet is not None:
        write_atomic(output.with_suffix(".png"), item.sheet)
    save_video_tokens(result, output, extra={"num_frames": settings["num_frames"], "fps": settings["fps"]})
    return Outcome(video, output, "ok", shape=tuple(tokens.shape))


def _existing(video: Path, output: Path, settings: dict[str, Any]) -> Outcome:
    """An output from an earlier run: done if made with the same settings, an error otherwise."""
    try:
        meta = read_metadata(output)
    except (ValueError, OSError) as e:
        return Outcome(video, output, "error", reason=f"{output} exists but is not a readable video-tokens file "
                                                      f"({e}); remove it or pass --overwrite")
    meta.setdefault("backend", "exact")  # files from before --backend were decoded exactly
    differ = {k: (meta.get(k), settings[k]) for k in RESUME_KEYS if meta.get(k) != settings[k]}
    if differ:
        described = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differ.items())
        return Outcome(video, output, "error",
                       reason=f"{output} exists with different settings ({described}); pass --overwrite to redo it")
    from safetensors import safe_open

    with safe_open(str(output), framework="pt") as f:
        shape = tuple(f.get_slice("tokens").get_shape())
    return Outcome(video, output, "skipped-existing", shape=shape)


def _record(outcome: Outcome) -> dict[str, Any]:
    record: dict[str, Any] = {"video": str(outcome.video), "output": outcome.output.name, "status": outcome.status}
    if outcome.reason is not None:
        record["reason"] = outcome.reason
    if outcome.shape is not None:
        record["tokens_shape"] = list(outcome.shape)
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _print_summary(outcomes: list[Outcome], out: Path, rank: int, world: int, tag: str, seconds: float,
                   loop_seconds: float, frames: int) -> None:
    prefix = f"[process {rank}/{world}] " if world > 1 else ""
    done = [o for o in outcomes if o.status == "ok"]
    skipped = [o for o in outcomes if o.status == "skipped-existing"]
    errors = [o for o in outcomes if o.status == "error"]
    for o in done + skipped:
        note = "" if o.status == "ok" else " (already done)"
        print(f"{prefix}{o.video.name}: tokens {o.shape}{note} -> {o.output.name}")
    rate = max(loop_seconds, 1e-9)
    print(f"{prefix}{len(done)} extracted, {len(skipped)} already done, {len(errors)} failed in {seconds:.1f} s "
          f"({len(done) / rate:.2f} videos/s, {frames / rate:.1f} frames/s after loading the tower){tag}; "
          f"outputs in {out}")
    if errors:
        print(f"{prefix}failed videos (see {out / MANIFEST}):")
        for o in errors:
            print(f"{prefix}  {o.video}: {o.reason}")
