"""`vlm-vision extract`: per-frame pooled video tokens for one clip or a whole corpus.

Built for corpora that take days over videos nobody has looked at, so that no result is wrong
without saying so, and any interruption costs little:
  - one `.safetensors` per video, named by the video's path relative to the input it was found
    under (`video.corpus.plan`), written to a temporary name and renamed into place
    (`video.atomic_files`), so an output that exists is complete;
  - every output records its source (resolved path, size, modification time, content
    fingerprint) and every setting that changes its tokens (the weights' fingerprint, dtype,
    layer, pooling, frames, sampling, backend, allow_partial). A re-run keeps an output only when
    all of these match; otherwise it extracts the video again and says why. An output that holds
    another video's tokens is never replaced silently (`--overwrite` replaces it);
  - any failure of one video (a file that does not decode or is truncated, out of memory, a full
    disk, an error in the tower) is recorded (`manifest.jsonl`, the final summary, a non-zero exit
    code) and the run goes on with the others. Out of memory is retried with smaller tower
    batches first. Ctrl-C stops at once; temporary files are removed, so nothing is half-written;
  - one run per output folder (`video.corpus.folder_lock`): a second run into it stops at once and says
    which run holds it;
  - decoding, the bottleneck, runs in `--workers` background processes that stay ahead of the
    tower (a prefetching `DataLoader`, `video.corpus.decode_jobs`), so the tower does not wait while decoding keeps up. With
    the tower on the CPU the workers also preprocess; on a GPU frames travel as uint8 and are
    preprocessed there;
  - under `accelerate launch` process i of n takes inputs i, i+n, i+2n, ...: every output has
    exactly one writer. Each process appends to its own `manifest.rank<i>.jsonl`; the main process
    merges them into `manifest.jsonl` (also at the start of a run, after a crash).

This module is the command: its flags, the device and processes, the output folder's lock, the
tower (`vlm_vision.commands.extract_tower`). The work itself takes the tower and the run's typed
settings (`video.corpus.settings.ExtractSettings`, built from the flags, whose defaults are its own)
as arguments and lives in `video` (`video.corpus.run.extract_share` and the modules it names).

Without downloaded weights the command stops and says how to get them or how to run with random
weights through the same architecture (`--random-weights`); random-weight outputs are labelled in
the progress bar, the summary, the manifest and each file's metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from video.decord_decoder import DecordNotInstalled, require_decord
from video.corpus.plan import VIDEO_EXTENSIONS, Found, find_inputs
from video.corpus.report import merge_rank_manifests, plural, print_summary
from video.corpus.run import extract_share
from video.corpus.settings import ExtractSettings, decoder_scale, load_arguments, token_settings, video_layout
from video.corpus.folder_lock import FolderBusy, FolderLock
from video.tower_pooling import DTYPES, check_tower_pooling
from vlm_vision.errors import InputError
from vlm_vision.commands.extract_tower import RANDOM_WEIGHTS_HINT, load_tower
from vlm_vision.commands.input_checks import check_output_folder, check_weights
from vlm_vision.evaluation.processes import barrier, resolve_device

__all__ = ["DEFAULT_MODEL", "RESUME_HINT", "add_arguments", "run", "settings_from_args"]

RESUME_HINT = "run the same command again to continue (finished videos are kept, the others are extracted)"

DEFAULT_MODEL = "openai/clip-vit-large-patch14-336"
_FIELDS = {f.name: f for f in dataclasses.fields(ExtractSettings)}
# The flags' defaults and choices are `ExtractSettings`'s (an on/off flag is off by default, as its field).
_DEFAULT = ExtractSettings()


# ----- arguments --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vlm-vision extract`."""
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
    parser.add_argument("--num-frames", type=_positive_int, default=_DEFAULT.num_frames,
                        help="frames sampled uniformly per video (with --fps: the most frames kept)")
    parser.add_argument("--fps", type=_positive_float, default=_DEFAULT.fps,
                        help="sample about this many frames per second")
    parser.add_argument("--sampling", choices=_choices("sampling"), default=_DEFAULT.sampling,
                        help="exact frames, or each target moved to the nearest keyframe (much faster decoding)")
    parser.add_argument("--backend", choices=_choices("backend"), default=_DEFAULT.backend,
                        help="decoder: exact frames (PyAV, checked against the timestamps), or decord's get_batch "
                             "as LLaVA-NeXT-Video's loader (its pixels, wrong frames included, for parity)")
    parser.add_argument("--min-frames", type=_positive_int, default=_DEFAULT.min_frames,
                        help="with --fps, the fewest frames per video (frames repeat in a short clip)")
    parser.add_argument("--max-frames", type=_positive_int, default=_DEFAULT.max_frames,
                        help="with --fps, the most frames per video (default: --num-frames)")
    parser.add_argument("--pool-stride", type=_positive_int, default=_DEFAULT.pool_stride,
                        help="2 turns 24x24 patches into 144 tokens")
    parser.add_argument("--pool-mode", choices=_choices("pool_mode"), default=_DEFAULT.pool_mode)
    parser.add_argument("--max-video-tokens", type=_positive_int, default=_DEFAULT.max_video_tokens,
                        help="token budget of one video in the model: a video pools at the finest stride from "
                             "--pool-stride up to twice it that fits (video.budget), as the model will; needs "
                             "the model's --video-newline and --faster-token-stride to count its tokens")
    parser.add_argument("--video-newline", choices=_choices("video_newline"), default=_DEFAULT.video_newline,
                        help="the model's newline layout (only counts tokens for --max-video-tokens)")
    parser.add_argument("--faster-token-stride", type=_positive_int, default=_DEFAULT.faster_token_stride,
                        help="the model's SlowFast stride (only counts tokens for --max-video-tokens; the file "
                             "holds every frame at the slow stride, the model pools fast frames once more)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: this process's accelerator, else the CPU)")
    parser.add_argument("--dtype", choices=_choices("dtype"), default=_DEFAULT.dtype, help="tower dtype")
    parser.add_argument("--batch-size", type=_positive_int, default=_DEFAULT.batch_size,
                        help="frames per tower call (default: all frames of a video at once)")
    parser.add_argument("--workers", type=_non_negative_int, default=_DEFAULT.workers,
                        help="background decoding processes (0 decodes in the main process)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every video whose output already exists, also one that holds another video's "
                             "tokens (outputs whose source or settings changed are redone without it)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="accept videos that decode fewer frames than their container declares (cut-short "
                             "downloads): tokens from the part that decodes, marked partial in the file and the "
                             "manifest (default: such a video is an error)")
    parser.add_argument("--full-resolution-frames", action="store_true",
                        help="send frames from the decoder process at the video's own resolution and resize them "
                             "afterwards, as before: the tower's pixels bit for bit as earlier versions made them "
                             "(default: the decoder process resizes each frame for the tower, within 2 grey levels "
                             "of that, and memory stops growing with the resolution); recorded with the tokens")
    parser.add_argument("--preview", action="store_true",
                        help="also write <name>.png, a contact sheet of the sampled frames with their timestamps")


def _choices(name: str) -> tuple[str, ...]:
    """The names `ExtractSettings.<name>` accepts."""
    return _FIELDS[name].metadata["choices"]


def settings_from_args(args: argparse.Namespace) -> ExtractSettings:
    """The run's `ExtractSettings`, from the parsed flags of the same names."""
    return ExtractSettings(**{name: getattr(args, name) for name in _FIELDS})


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


# ----- the run ----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Extract tokens for every input video; 0 when all succeeded (or were done), 1 otherwise, 2 when
    the run cannot start (weights, pooling, the output folder in use, decord missing for --backend decord).

    Raises:
        InputError: for inputs, an output folder, weights or settings that cannot work, before any
            model is loaded or video decoded where they can be checked then.
    """
    t0 = time.perf_counter()
    config = settings_from_args(args)
    found = _check_inputs(args)
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
        return _run_locked(args.model, config, found, out, device, rank, world, t0)
    finally:
        lock.release()


def _run_locked(model: str, config: ExtractSettings, found: list[Found], out: Path, device: torch.device, rank: int,
                world: int, t0: float) -> int:
    if rank == 0:
        merge_rank_manifests(out)  # lines left by an interrupted multi-process run
    barrier(world)
    tower, model_label = load_tower(model, random_weights=config.random_weights, device=device,
                                    dtype=DTYPES[config.dtype])
    try:
        check_tower_pooling(tower, config.pool_stride, config.pool_mode)
        layout = video_layout(config, tower)
        load_kwargs = load_arguments(config, layout, decoder_scale(config, tower))
    except ValueError as e:
        raise InputError("settings that do not fit the tower", f"--model {model}", str(e)) from None
    settings = token_settings(config, tower, model_label)
    tag = " [RANDOM WEIGHTS]" if config.random_weights else ""
    if rank == 0:
        print(f"vlm-vision extract: {plural(len(found), 'video')} -> {out} with {model_label}{tag} on {device} "
              f"({config.dtype}), {config.num_frames} frames ({config.backend} decoding), pool {config.pool_mode} "
              f"stride {config.pool_stride}" + (f", {world} processes" if world > 1 else ""), file=sys.stderr)
    outcomes, frames_done, loop_seconds = extract_share(found, out, tower, config, model_label=model_label,
                                                        settings=settings, layout=layout, load_kwargs=load_kwargs,
                                                        rank=rank, world=world, tag=tag)
    barrier(world)
    if rank == 0 and world > 1:
        merge_rank_manifests(out)
    print_summary(outcomes, out, rank, world, tag, time.perf_counter() - t0, loop_seconds, frames_done)
    return 1 if any(o.status == "error" for o in outcomes) else 0


def _check_inputs(args: argparse.Namespace) -> list[Found]:
    """What can be wrong before the tower loads or the output folder is made: the inputs named (and
    the videos they hold, found), the output folder, the weights. Returns the videos found."""
    for item in args.inputs:
        if not Path(item).exists():
            raise InputError("input not found", item, "an existing video file, a folder of videos, or a .txt/.lst "
                             "list of paths")
    check_output_folder(args.out, "--out")
    if args.backend == "decord":
        _check_decord_installed()
    if not args.random_weights:
        check_weights(args.model, "--model", what="weights", extra_hint=RANDOM_WEIGHTS_HINT)
    found = find_inputs(args.inputs)
    if not found:
        raise InputError("no videos found", " ".join(map(str, args.inputs)),
                         f"video files or folders holding them (extensions: {sorted(VIDEO_EXTENSIONS)})")
    return found


def _check_decord_installed() -> None:
    """Raise InputError (exit 2, nothing written) when `--backend decord` is asked for and decord is missing."""
    try:
        require_decord()
    except DecordNotInstalled as error:
        raise InputError("decord is not installed", "--backend decord",
                         "the default --backend exact (PyAV, on every platform), or decord installed: "
                         "pip install 'vlm-vision[decord]' (decord has wheels for Linux x86-64 only, where "
                         "`pip install vlm-vision` includes it)") from error


def _all_agree(ok: bool, num_processes: int) -> bool:
    """True when `ok` holds on every process (a collective call under `accelerate launch`)."""
    if num_processes == 1:
        return ok
    flag = torch.tensor([int(ok)])
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())
