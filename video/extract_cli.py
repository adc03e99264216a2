"""`vlm-vision extract`: per-frame pooled video tokens for one clip or a whole corpus.

Built for corpora that take days over videos nobody has looked at, so that no result is wrong
without saying so, and any interruption costs little:
  - one `.safetensors` per video, named by the video's path relative to the input it was found
    under (`video.extract_plan`), written to a temporary name and renamed into place, so an output
    that exists is complete;
  - every output records its source (resolved path, size, modification time, content
    fingerprint) and every setting that changes its tokens (the weights' fingerprint, dtype,
    layer, pooling, frames, sampling, backend, allow_partial). A re-run keeps an output only when
    all of these match; otherwise it extracts the video again and says why. An output that holds
    another video's tokens is never replaced silently (`--overwrite` replaces it);
  - any failure of one video (a file that does not decode or is truncated, out of memory, a full
    disk, an error in the tower) is recorded (`manifest.jsonl`, the final summary, a non-zero exit
    code) and the run goes on with the others. Out of memory is retried with smaller tower
    batches first. Ctrl-C stops at once; temporary files are removed, so nothing is half-written;
  - one run per output folder (`video.folder_lock`): a second run into it stops at once and says
    which run holds it;
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
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from video.budget import VideoLayout, sampled_frame_count
from video.contact_sheet import contact_sheet, contact_sheet_png
from video.atomic_files import temporary_files, write_atomic
from video.extract import save_video_tokens, tokens_for_clip
from video.extract_plan import VIDEO_EXTENSIONS, Decision, clashes, decide, find_inputs, output_name
from video.extract_report import (Outcome, append_line, manifest_path, merge_rank_manifests, plural, print_summary,
                                  record)
from video.extract_tower import WeightsUnavailable, load_tower, resolve_device, weights_fingerprint
from video.folder_lock import FolderBusy, FolderLock
from video.provenance import source_identity
from video.tower_pooling import check_tower_pooling, encode_frames, encode_pixels

__all__ = ["add_arguments", "contact_sheet", "find_videos", "run", "shard"]

DEFAULT_MODEL = "openai/clip-vit-large-patch14-336"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    parser.add_argument("--min-frames", type=_positive_int, default=1,
                        help="with --fps, the fewest frames per video (frames repeat in a short clip)")
    parser.add_argument("--max-frames", type=_positive_int, default=None,
                        help="with --fps, the most frames per video (default: --num-frames)")
    parser.add_argument("--pool-stride", type=_positive_int, default=2, help="2 turns 24x24 patches into 144 tokens")
    parser.add_argument("--pool-mode", choices=("average", "max", "bilinear"), default="average")
    parser.add_argument("--max-video-tokens", type=_positive_int, default=None,
                        help="token budget of one video in the model: a video pools at the finest stride from "
                             "--pool-stride up to twice it that fits (video.budget), as the model will; needs "
                             "the model's --video-newline and --faster-token-stride to count its tokens")
    parser.add_argument("--video-newline", choices=("no_token", "one_token", "frame", "grid"), default="no_token",
                        help="the model's newline layout (only counts tokens for --max-video-tokens)")
    parser.add_argument("--faster-token-stride", type=_positive_int, default=None,
                        help="the model's SlowFast stride (only counts tokens for --max-video-tokens; the file "
                             "holds every frame at the slow stride, the model pools fast frames once more)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: this process's accelerator, else the CPU)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="tower dtype")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="frames per tower call (default: all frames of a video at once)")
    parser.add_argument("--workers", type=_non_negative_int, default=2,
                        help="background decoding processes (0 decodes in the main process)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every video whose output already exists, also one that holds another video's "
                             "tokens (outputs whose source or settings changed are redone without it)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="accept videos that decode fewer frames than their container declares (cut-short "
                             "downloads): tokens from the part that decodes, marked partial in the file and the "
                             "manifest (default: such a video is an error)")
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


# ----- inputs ----------------------------------------------------------------------------------

def find_videos(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The video paths of `video.extract_plan.find_inputs`, in order, each once."""
    return [f.path for f in find_inputs(inputs)]


def shard(items: list, process_index: int, num_processes: int) -> list:
    """Items i with i % num_processes == process_index: one writer per output across processes."""
    return items[process_index::num_processes]


def _barrier(num_processes: int) -> None:
    if num_processes > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def _all_agree(ok: bool, num_processes: int) -> bool:
    """True when `ok` holds on every process (a collective call under `accelerate launch`)."""
    if num_processes == 1:
        return ok
    flag = torch.tensor([int(ok)])
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


# ----- decoding in background workers -----------------------------------------------------------

@dataclasses.dataclass
class Decoded:
    """What a decoding worker hands to the main process for one video."""

    position: int
    identity: dict[str, Any] | None = None
    """The source's identity (`video.provenance.source_identity`), read just before decoding."""
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

    def __init__(self, videos: list[Path], *, load_kwargs: dict[str, Any], transform=None, preview: bool = False,
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
        from video.decode import VideoDecodeError, load_video

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


# ----- the run ----------------------------------------------------------------------------------

def token_settings(args: argparse.Namespace, tower, model_label: str) -> dict[str, Any]:
    """Every setting that changes the tokens; an output is kept only when all of them match."""
    settings = {"model": model_label, "weights_fingerprint": weights_fingerprint(tower),
                "random_weights": args.random_weights, "dtype": args.dtype, "layer": int(tower.select_layer),
                "pool_stride": args.pool_stride, "pool_mode": args.pool_mode, "sampling": args.sampling,
                "num_frames": args.num_frames, "fps": args.fps, "backend": args.backend, "start": None, "end": None,
                "allow_partial": args.allow_partial}
    # recorded only when set, so outputs of earlier runs without them still match
    for name, default in (("min_frames", 1), ("max_frames", None), ("max_video_tokens", None),
                          ("faster_token_stride", None)):
        if getattr(args, name, default) != default:
            settings[name] = getattr(args, name)
    if getattr(args, "max_video_tokens", None) is not None:
        settings["video_newline"] = args.video_newline
        settings["base_pool_stride"] = settings.pop("pool_stride")  # each file records the stride it got
    return settings


def video_layout(args: argparse.Namespace, tower) -> VideoLayout:
    """The model's video-token settings these flags describe (pooling, newlines, SlowFast, budget)."""
    return VideoLayout(grid=tuple(tower.grid_size), pool_stride=args.pool_stride, pool_mode=args.pool_mode,
                       newline=getattr(args, "video_newline", "no_token"),
                       faster_token_stride=getattr(args, "faster_token_stride", None),
                       max_video_tokens=getattr(args, "max_video_tokens", None))


def load_arguments(args: argparse.Namespace, layout: VideoLayout) -> dict[str, Any]:
    """`video.load_video`'s arguments: fixed count, or fps with min/max frames within the token budget."""
    kwargs = {"sampling": args.sampling, "backend": args.backend, "allow_partial": args.allow_partial}
    min_frames = getattr(args, "min_frames", 1)
    if args.fps:
        most = layout.frame_limit(getattr(args, "max_frames", None) or args.num_frames, min_frames)
        return {**kwargs, "fps": args.fps, "min_frames": min_frames, "max_frames": most}
    count = sampled_frame_count(1, 1.0, None, num_frames=args.num_frames, min_frames=min_frames,
                                max_frames=layout.frame_limit(None, min_frames))
    return {**kwargs, "num_frames": count}


def run(args: argparse.Namespace) -> int:
    """Extract tokens for every input video; 0 when all succeeded (or were done), 1 otherwise, 2 when
    the run cannot start (weights, pooling, the output folder in use)."""
    t0 = time.perf_counter()
    device, rank, world = resolve_device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out)
    busy = None
    if rank == 0:
        try:
            lock.acquire()
        except FolderBusy as e:
            busy = e
    if not _all_agree(busy is None, world):
        if busy is not None:
            print(f"vlm-vision extract: {busy}", file=sys.stderr)
        return 2
    try:
        if rank == 0 and lock.previous:
            print(f"vlm-vision extract: taking over {lock.path} left by a run that is no longer running "
                  f"(pid {lock.previous.get('pid')} on host {lock.previous.get('host')}, started "
                  f"{lock.previous.get('started')})", file=sys.stderr)
        return _run_locked(args, out, device, rank, world, t0)
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, out: Path, device: torch.device, rank: int, world: int, t0: float) -> int:
    if rank == 0:
        merge_rank_manifests(out)  # lines left by an interrupted multi-process run
    _barrier(world)
    try:
        tower, model_label = load_tower(args.model, random_weights=args.random_weights, device=device,
                                        dtype=DTYPES[args.dtype])
    except WeightsUnavailable as e:
        print(f"vlm-vision extract: {e}", file=sys.stderr)
        return 2
    try:
        check_tower_pooling(tower, args.pool_stride, args.pool_mode)
        layout = video_layout(args, tower)
        load_kwargs = load_arguments(args, layout)
    except ValueError as e:
        print(f"vlm-vision extract: {args.model}: {e}", file=sys.stderr)
        return 2
    found = find_inputs(args.inputs)
    if not found:
        print(f"vlm-vision extract: no videos found in {args.inputs} (extensions: {sorted(VIDEO_EXTENSIONS)})",
              file=sys.stderr)
        return 1
    settings = token_settings(args, tower, model_label)
    manifest = manifest_path(out, rank, world)
    record_base = {"model": model_label, "random_weights": args.random_weights, "rank": rank}
    tag = " [RANDOM WEIGHTS]" if args.random_weights else ""
    if rank == 0:
        print(f"vlm-vision extract: {plural(len(found), 'video')} -> {out} with {model_label}{tag} on {device} "
              f"({args.dtype}), {args.num_frames} frames ({args.backend} decoding), pool {args.pool_mode} stride "
              f"{args.pool_stride}" + (f", {world} processes" if world > 1 else ""), file=sys.stderr)

    outcomes, todo = _plan(found, out, settings, rank, world, overwrite=args.overwrite)
    for outcome in outcomes:
        append_line(manifest, {**record_base, **record(outcome)})

    on_cpu = device.type == "cpu"
    jobs = DecodeJobs([video for video, _, _ in todo], load_kwargs=load_kwargs, preview=args.preview,
                      transform=tower.image_transform if on_cpu else None)
    frames_done = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="video", desc=f"extract{tag}", disable=rank != 0 or not todo, file=sys.stderr)
    start = time.perf_counter()
    for item in decoded_stream(jobs, args.workers, pin_memory=not on_cpu):
        video, output, why = todo[item.position]
        if item.error is not None:
            outcome = Outcome(video, output, "error", reason=item.error)
        else:
            outcome = _encode_isolated(item, video, output, tower, args, model_label, settings, layout)
            frames_done += outcome.shape[0] if outcome.shape else 0
        if why is not None and outcome.status != "error":
            outcome.reason = f"extracted again: {why}"
        outcomes.append(outcome)
        append_line(manifest, {**record_base, **record(outcome)})
        bar.update(1)
        bar.set_postfix_str(f"{frames_done / max(time.perf_counter() - start, 1e-9):.1f} frames/s")
    bar.close()

    loop_seconds = time.perf_counter() - start
    _barrier(world)
    if rank == 0 and world > 1:
        merge_rank_manifests(out)
    print_summary(outcomes, out, rank, world, tag, time.perf_counter() - t0, loop_seconds, frames_done)
    return 1 if any(o.status == "error" for o in outcomes) else 0


def _plan(found, out: Path, settings: dict[str, Any], rank: int, world: int, *,
          overwrite: bool) -> tuple[list[Outcome], list[tuple[Path, Path, str | None]]]:
    """(outcomes settled before decoding, (video, output, why it is extracted again) still to do).

    Names clash check over all inputs (every process sees the same list), then this process's
    share. Also removes the temporary files an interrupted run left for these outputs.
    """
    taken = clashes(found)
    settled, todo = [], []
    for i, f in shard(list(enumerate(found)), rank, world):
        output = out / f"{output_name(f.relative)}.safetensors"
        if i in taken:
            other = found[taken[i]]
            settled.append(Outcome(f.path, output, "error", reason=(
                f"its output name {output.name!r} is also that of {other.path} in this run (both are "
                f"{output_name(f.relative)!r} relative to their inputs); pass their common parent folder as the "
                f"input so that names include the subfolders, or extract them into different --out folders")))
            continue
        for leftover in temporary_files(output, stale_only=True) + temporary_files(output.with_suffix(".png"),
                                                                                   stale_only=True):
            leftover.unlink(missing_ok=True)
        try:
            decision = decide(f.path, output, settings, overwrite=overwrite)
        except Exception as e:  # e.g. an output that cannot be read: this video only
            decision = Decision("error", f"{type(e).__name__}: {e}")
        if decision.action == "keep":
            settled.append(Outcome(f.path, output, "skipped-existing", shape=decision.shape))
        elif decision.action == "error":
            settled.append(Outcome(f.path, output, "error", reason=decision.why))
        else:
            todo.append((f.path, output, decision.why))
    return settled, todo


def _encode_isolated(item: Decoded, video: Path, output: Path, tower, args, model_label: str,
                     settings: dict, layout: VideoLayout | None = None) -> Outcome:
    """`_encode_and_save`, with any exception of this video turned into an "error" outcome.

    KeyboardInterrupt and SystemExit are not exceptions of one video: they stop the run (a
    temporary file being written is removed by `write_atomic`).
    """
    try:
        return _encode_and_save(item, video, output, tower, args, model_label, settings, layout)
    except Exception as e:
        return Outcome(video, output, "error", reason=f"{type(e).__name__}: {e}")


def _encode_and_save(item: Decoded, video: Path, output: Path, tower, args, model_label: str,
                     settings: dict, layout: VideoLayout | None = None) -> Outcome:
    """Tower + pooling for one decoded video, then its files (preview first: the tokens mark it done).

    The stride is the one the model's token budget gives this frame count (`layout.stride_for`)."""
    clip = item.clip
    stride = layout.stride_for(len(clip.indices)) if layout is not None else args.pool_stride
    tokens, batch_size, retries = encode_with_retry(item, tower, stride, args.pool_mode, args.batch_size)
    result = tokens_for_clip(clip, tokens, tower, pool_stride=stride, pool_mode=args.pool_mode,
                             model=model_label, random_weights=args.random_weights, sampling=args.sampling)
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


def encode_with_retry(item: Decoded, tower, pool_stride: int, pool_mode: str,
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


def _encode_batches(item: Decoded, tower, pool_stride: int, pool_mode: str, size: int) -> torch.Tensor:
    if item.pixels is not None:
        return encode_pixels(tower, item.pixels, stride=pool_stride, mode=pool_mode, batch_size=size)
    return encode_frames(tower, item.clip.frames, stride=pool_stride, mode=pool_mode, batch_size=size)  # (T, N', D)
