"""Setting up a run: the model (tower, projector, LLM, LoRA), what trains, and the datasets.

Why `max_length` defaults to the LLM's context: LLaVA-NeXT-Video's 32 frames of 144 pooled tokens
are 4608 visual positions, more than a fixed 2048 (every video sample would be dropped), and the
LLM's own context is the longest sequence it was trained on. When a raw video cannot fit, the run
stops before reading any media, naming the frames, the tokens and the flags that change them.

Why a bad sample never stops a run: records are checked when the dataset is built (missing media,
visual spans past `max_length`, empty conversations), and the survivors only can fail at decode
time (see `vlm_vision.training.order`). Every skip is logged with its reason and written to
`skipped.jsonl`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from torch import nn

from video.clip import VideoDecodeError
from video.extract import load_video_tokens
from video.budget import sampled_frame_count
from vlm_vision.errors import InputError
from vlm_vision.model.anyres import anyres_num_tokens, anyres_pixel_values
from vlm_vision.data.files import Skipped
from vlm_vision.data.formats import BadSample, MediaRoots, parse_record
from vlm_vision.data.resume import DATA_FILES_RECORD, check_data_files
from vlm_vision.data.scan import KINDS, Rows, TrainingData, load_training_data, open_rows
from vlm_vision.training.config import TrainConfig
from vlm_vision.data.examples import ConversationDataset
from vlm_vision.data.record_tokens import VisualSpec
from vlm_vision.training.log import RunLog, logger
from vlm_vision.training.params import mark_trainable
from vlm_vision.training.provenance import check_cached_tokens
from vlm_vision.training.runtime import resolve_device_defaults
from vlm_vision.training.skips import SkipCeiling
from video.tower_pooling import DTYPES
from vlm_vision.model.run_folder import TrainedSpec, absolute_if_local, build_base, load_trained_weights
from vlm_vision.model.llm import load_tokenizer

__all__ = ["Run", "llm_context", "resolve_max_length", "scan_frames", "setup", "video_fit_error", "visual_spec"]

# Text tokens (template, question, answer) a sequence needs besides its visual span, for the
# default max_length of an LLM whose context is unknown and for the smallest max_length suggested.
TEXT_BUDGET = 1024
MIN_TEXT = 64
# transformers' tokenizers report a huge `model_max_length` (int(1e30)) when the model sets none.
_UNSET_MODEL_MAX_LENGTH = 1_000_000_000


@dataclasses.dataclass
class Run:
    """What `setup` built: the model, its processor and spec, the datasets, the trainable parameters."""

    model: nn.Module
    processor: Any
    spec: TrainedSpec
    dataset: ConversationDataset
    eval_dataset: ConversationDataset | None
    trainable: dict[str, int]
    skip_ceiling: SkipCeiling
    """Counts the training data's skipped samples (the scan's already) against `max_skip_fraction`."""
    config: TrainConfig
    """The run's config with `max_length` resolved (what checkpoints and `final/` record)."""
    lengths: np.ndarray | None = None
    """int32[K] token length of each training sample (from the scan; length grouping uses it)."""
    kinds: np.ndarray | None = None
    """int8[K] media kind code of each training sample (`vlm_vision.data.scan.KINDS`)."""


def llm_context(llm_config: Any, tokenizer: Any) -> int | None:
    """The LLM's context length: `max_position_embeddings`, else the tokenizer's `model_max_length`
    when the model sets one, else None."""
    text_config = llm_config.get_text_config() if hasattr(llm_config, "get_text_config") else llm_config
    positions = getattr(text_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _UNSET_MODEL_MAX_LENGTH:
        return limit
    return None


def resolve_max_length(max_length: int | None, context: int | None, longest_visual: int) -> tuple[int, str]:
    """(max_length, where it came from): the given value, else the LLM's context, else the longest
    visual span plus `TEXT_BUDGET` text tokens.

    Example:
        >>> resolve_max_length(None, 32768, 4608)
        (32768, "the LLM's context")
    """
    if max_length is not None:
        return max_length, "--max-length"
    if context is not None:
        return context, "the LLM's context"
    return longest_visual + TEXT_BUDGET, f"the longest visual span + {TEXT_BUDGET} text tokens (LLM context unknown)"


def video_fit_error(frames: int, tokens_per_frame: int, video_tokens: Any, max_length: int, source: str,
                    frames_flag: str = "--num-frames") -> str | None:
    """Why a raw video of `frames` frames cannot fit `max_length`, naming what to change; None when it fits.

    `video_tokens(frames)` is the video's visual span (newline tokens included); a sample needs it
    plus at least `MIN_TEXT` text tokens.
    """
    span = video_tokens(frames)
    if span + MIN_TEXT <= max_length:
        return None
    fitting = max((f for f in range(1, frames) if video_tokens(f) + MIN_TEXT <= max_length), default=0)
    newlines = f" + {span - frames * tokens_per_frame} newline tokens" if span != frames * tokens_per_frame else ""
    fewer = f" or lower {frames_flag} to {fitting} or fewer" if fitting else ""
    return (f"a video does not fit: {frames} frames x {tokens_per_frame} tokens = {frames * tokens_per_frame} "
            f"visual tokens{newlines}, plus at least {MIN_TEXT} text tokens, exceed max_length={max_length} "
            f"(from {source}); raise --max-length to {span + MIN_TEXT} or more{fewer}")


def _first_raw_video(rows: Rows, roots: MediaRoots) -> str | None:
    """The id of the first record holding a raw (not pre-extracted) video, or None."""
    for n in range(len(rows)):
        raw = rows.raw(n)
        if isinstance(raw, Skipped):
            continue
        try:
            record = parse_record(raw, roots, rows.positions[n], rows.source(n), rows.data_dir(n))
        except BadSample:
            continue
        if record.media_kind == "video" and not record.cached:
            return record.id
    return None


def visual_spec(model: nn.Module, processor: Any, num_frames: int) -> VisualSpec:
    """How `model` and `processor` turn media into placeholder tokens, for a scan of `num_frames` per video.

    `model` needs only `pooled_grid`, `video_layout`, `image_tokens`, `image_grid_pinpoints`,
    `anyres_convention` and `tower` (`vlm-vision data-stats` passes a stand-in without an LLM).
    """
    # Counting functions of small objects (the video layout, the anyres numbers), never bound methods
    # of the model: the dataset holds them, and every DataLoader worker receives a pickled dataset.
    rows, cols = model.pooled_grid
    marked = processor.time_markers
    anyres = None
    if model.image_grid_pinpoints is not None:
        anyres = functools.partial(anyres_num_tokens, grid_pinpoints=model.image_grid_pinpoints,
                                   tile_size=model.tower.image_size, patch_size=model.tower.patch_size,
                                   convention=model.anyres_convention)
    video_tokens = functools.partial(_marked_span_length, processor) if marked else model.video_layout.video_tokens
    return VisualSpec(token_ids={"image": processor.image_token_id, "video": processor.video_token_id},
                      video_tokens=video_tokens,
                      image_tokens=model.image_tokens, tokens_per_frame=rows * cols, num_frames=num_frames,
                      anyres_tokens=anyres,
                      video_span=processor.video_span if marked else None,
                      time_instruction=processor.time_instruction)


def _marked_span_length(processor: Any, frames: int) -> int:
    """Ids of a video span with time markers, estimated before decoding with every time 0."""
    return len(processor.video_span(frames, [0.0] * frames))


def scan_frames(config: TrainConfig, processor: Any) -> int:
    """Frames the length scan assumes for a raw video: the fixed count, or with `fps` the most it can
    get (`max_frames` within the token budget; `num_frames` when neither bounds it)."""
    if config.fps is None:
        return sampled_frame_count(1, 1.0, None, num_frames=config.num_frames, min_frames=config.min_frames,
                                   max_frames=processor.max_frames)
    return processor.max_frames if processor.max_frames is not None else config.num_frames


def _dataset(path: str, model: nn.Module, processor: Any, config: TrainConfig, log: RunLog, main: bool,
             max_length_source: str) -> tuple[ConversationDataset, SkipCeiling, TrainingData]:
    """The dataset of a data spec; its scan is shared by all processes and cached in `output_dir/data-scan/`."""
    state = PartialState()
    # Absolute, so that decoding does not depend on the working directory of whatever process decodes.
    roots = MediaRoots(*(Path(p).absolute() if p else None for p in (config.media_root, config.image_folder,
                                                                     config.video_folder)))
    frames = scan_frames(config, processor)
    visual = visual_spec(model, processor, frames)
    started = time.perf_counter()
    cache = Path(config.output_dir) / "data-scan"
    check_data_files(path, Path(config.output_dir) / DATA_FILES_RECORD, resume=config.resume, write=main)
    rows = open_rows(path, seed=config.seed, cache_dir=cache, local_main=state.is_local_main_process,
                     barrier=state.wait_for_everyone)
    problem = video_fit_error(frames, visual.tokens_per_frame, visual.video_tokens, config.max_length,
                              max_length_source, frames_flag="--num-frames" if config.fps is None else "--max-frames")
    if problem and (video := _first_raw_video(rows, roots)) is not None:
        raise InputError("settings that no video fits", path, f"{problem} (first video: {video})")
    data = load_training_data(rows, roots, processor.tokenizer, visual, config.max_length,
                              cache_dir=cache, process_index=state.process_index,
                              num_processes=state.num_processes, gather=lambda obj: gather_object([obj]),
                              workers=max(1, config.num_workers))
    records, skipped = data.records, data.skipped
    if main:
        if skipped:
            log.skipped(skipped, f"scan of {path}")
        reasons = Counter(s.reason.split(":")[0] for s in skipped)
        logger.info("%s: %d samples kept, %d skipped %s; scan %s in %.1f s", path, len(records), len(skipped),
                    dict(reasons), "read from the cache" if data.cache_hit else "computed",
                    time.perf_counter() - started)
    if not len(records):
        hint = ("; raise --max-length or lower --num-frames" if any("truncated" in s.reason for s in skipped)
                else "")
        raise InputError("no usable samples", path, f"at least one record that can be trained on: all "
                         f"{len(skipped)} were skipped (first reasons: {[s.reason for s in skipped[:3]]}){hint}")
    ceiling = SkipCeiling(len(records) + len(skipped), config.max_skip_fraction, path)
    ceiling.add(skipped, "the scan")
    cached = data.cached if data.cached is not None else data.kinds == KINDS["video"]
    videos = (records[int(i)] for i in np.flatnonzero(cached))  # read one at a time, never listed
    check_cached_tokens(videos, model.tower, num_frames=None if config.fps else visual.num_frames, fps=config.fps,
                        pool_stride=config.pool_stride, pool_mode=config.pool_mode,
                        max_video_tokens=config.max_video_tokens, accept=config.accept_foreign_tokens)
    load_anyres = None
    if model.image_grid_pinpoints is not None:
        load_anyres = functools.partial(_anyres_crops, transform=model.tower.image_transform,
                                        grid_pinpoints=model.image_grid_pinpoints, convention=model.anyres_convention)
    dataset = ConversationDataset(
        records, processor.tokenizer, visual, max_length=config.max_length,
        load_video=functools.partial(_video_clip, processor), load_cached=_cached_tokens,
        transform=model.tower.image_transform, load_anyres=load_anyres, decode_errors=(VideoDecodeError,))
    return dataset, ceiling, data


# Module-level (picklable) loaders, so DataLoader workers can be spawned as well as forked.
def _video_clip(processor: Any, path: Path) -> Any:
    """The `VideoClip` of a raw video, sampled as the processor samples (frame count, budget)."""
    return processor.load_clip(path)  # frames uint8[T, H, W, 3], presentation times


def _anyres_crops(path: Path, transform: Any, grid_pinpoints: Sequence[Sequence[int]],
                  convention: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image's anyres crops and its (height, width)."""
    return anyres_pixel_values(path, transform, grid_pinpoints=grid_pinpoints, tile_size=transform.image_size,
                               convention=convention)  # (P, 3, S, S), (H, W)


def _cached_tokens(path: Path) -> torch.Tensor:
    """A token file's pooled tower tokens."""
    return load_video_tokens(path).tokens  # (T, N', D)


def setup(config: TrainConfig, log: RunLog, main: bool, device: torch.device = torch.device("cpu")) -> Run:
    """Build the model and datasets of `config`; `main` logs the scan's skips (the main process).

    Settings left at "auto" take the values of `device` (`resolve_device_defaults`).
    """
    config = resolve_device_defaults(config, device)[0]
    dtype = DTYPES[config.model_dtype]
    tokenizer = load_tokenizer(config.llm)
    spec = TrainedSpec(llm=absolute_if_local(config.llm), tower=absolute_if_local(config.tower),
                       projector_type=config.projector_type, vocab_size=0, new_token_ids=[],
                       image_token_id=None, video_token_id=None, select_layer=config.select_layer,
                       pool_stride=config.pool_stride, pool_mode=config.pool_mode,
                       video_newline=config.video_newline, num_frames=config.num_frames, stage=config.stage,
                       image_grid_pinpoints=config.image_grid_pinpoints, anyres_convention=config.anyres_convention,
                       faster_token_stride=config.faster_token_stride, max_video_tokens=config.max_video_tokens,
                       fps=config.fps, min_frames=config.min_frames, max_frames=config.max_frames,
                       time_instruction=config.time_instruction, time_markers=config.time_markers,
                       train={})
    model, processor = build_base(spec, tokenizer=tokenizer, dtype=dtype)  # vocab_size 0: a fresh build
    processor.full_resolution_frames = config.full_resolution_frames  # raw videos: the decoder's resize or none
    config, max_length_source = _with_max_length(config, model, processor, main)
    spec.train = dataclasses.asdict(config)
    spec.image_token_id, spec.video_token_id = processor.image_token_id, processor.video_token_id
    spec.new_token_ids = sorted(tokenizer.convert_tokens_to_ids(t) for t in processor.added_tokens)
    spec.vocab_size = model.llm.get_input_embeddings().num_embeddings
    if config.init_from:
        _init_from(model, config.init_from, spec)
    # Trainable weights live in float32 whatever the frozen parts' dtype (autocast computes in bf16/fp16).
    model.projector.float()
    if config.uses_newline:
        model.image_newline.data = model.image_newline.data.float()
    if model.faster_token is not None:
        model.faster_token.data = model.faster_token.data.float()
    if config.gradient_checkpointing:
        if hasattr(model.llm, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.llm.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.enable_input_require_grads()
    model.llm.config.use_cache = False
    if config.stage == 2:
        from peft import LoraConfig, get_peft_model  # lazy: peft takes seconds to import; stage 1 needs no LoRA

        spec.lora = {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                     "targets": list(config.lora_targets)}
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_targets), bias="none", task_type="CAUSAL_LM")
        model.llm = get_peft_model(model.llm, lora)
    trainable = mark_trainable(model, config, spec.new_token_ids)
    if config.mixed_precision != "no":
        # Under autocast every trainable tensor is float32 (the new token rows too): fp16 gradients of fp16 weights cannot be unscaled, and bf16 weights round small updates away.
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    dataset, ceiling, data = _dataset(config.data, model, processor, config, log, main, max_length_source)
    eval_dataset = _dataset(config.eval_data, model, processor, config, log, main,
                            max_length_source)[0] if config.eval_data else None
    return Run(model, processor, spec, dataset, eval_dataset, trainable, ceiling, config, data.lengths, data.kinds)


def _with_max_length(config: TrainConfig, model: nn.Module, processor: Any, main: bool) -> tuple[TrainConfig, str]:
    """`config` with `max_length` resolved (`resolve_max_length`), and where the value came from."""
    context = llm_context(model.llm.config, processor.tokenizer)
    frames = scan_frames(config, processor)
    longest = max(model.video_tokens(frames), model.image_tokens)
    max_length, source = resolve_max_length(config.max_length, context, longest)
    if context is not None and max_length > context:
        logger.warning("max_length=%d is longer than the LLM's context (%d positions): positions past it were "
                       "never trained", max_length, context)
    if main:
        print(f"max_length {max_length} (from {source}); a {frames}-frame video takes "
              f"{model.video_tokens(frames)} visual tokens")
    return dataclasses.replace(config, max_length=max_length), source


def _init_from(model: nn.Module, folder: str, spec: TrainedSpec) -> None:
    init = TrainedSpec.read(folder)
    mismatched = {k: (getattr(init, k), getattr(spec, k)) for k in
                  ("projector_type", "vocab_size", "image_token_id", "video_token_id", "pool_stride", "pool_mode",
                   "video_newline", "faster_token_stride")
                  if getattr(init, k) != getattr(spec, k)}
    if mismatched:
        raise InputError("trained with other settings", f"--init-from {folder}", f"a run with this run's settings; "
                         f"init_from {folder} was trained with other settings (theirs, ours): {mismatched}")
    if init.lora is not None:
        raise InputError("holds a LoRA adapter", f"--init-from {folder}", f"a stage-1 folder; init_from {folder} "
                         f"holds a LoRA adapter; merge it first (merge_trained) and train "
                         f"on the merged LLM")
    load_trained_weights(model, folder, init)

