"""Training: stage 1 fits the projector, stage 2 adds LoRA on the LLM; the tower never trains.

LLaVA-1.5's two-stage recipe (its `scripts/v1_5`). Stage 1 aligns the projector to a frozen LLM at a high
learning rate (1e-3). Stage 2 keeps training the projector at a low rate (2e-5) while LoRA adapts
the LLM's attention and MLP projections (r=128, alpha=256, dropout 0.05; 2e-4). What trains is
declared once, in `mark_trainable`, and printed at start.

The loop is plain: setup -> for each optimizer step, `grad_accum` micro-batches -> save. accelerate
supplies devices, mixed precision, gradient accumulation, DDP (`accelerate launch`) and
DeepSpeed/FSDP (its config); nothing here depends on which.

Why resuming is exact: the data order is a pure function of (seed, epoch) (`micro_batch_indices`),
so the position is just the number of micro-batches consumed; a checkpoint stores the trainable
weights, the optimizer, the scheduler and every process's RNG state, and the data loader draws
no numbers from the global RNG (it has its own generator). A resumed run then replays the same
batches with the same dropout masks as an uninterrupted one.

Why a bad sample never stops a run: records are checked when the dataset is built (missing media,
visual spans past `max_length`, empty conversations) and the survivors only can fail at decode
time; a sample that fails then is replaced by the next one in the epoch order, so every process
still sees a full batch and stays in step with the others. Every skip is logged with its reason
and written to `skipped.jsonl`.

Shapes: B batch, L sequence, I images, V videos, T frames, S image side, N' pooled tokens per
frame, D_v tower width.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_vision.train_data import (
    IGNORE_INDEX,
    ConversationDataset,
    Example,
    Skipped,
    VisualSpec,
    pad_batch,
    read_records,
    scan_records,
)
from vlm_vision.trained import (
    DTYPES,
    TrainedSpec,
    absolute_if_local,
    atomic_dir,
    build_base,
    load_tokenizer,
    load_trained_weights,
    replace_dir,
    save_trained,
)

__all__ = ["TrainConfig", "train"]

logger = logging.getLogger("vlm_vision.train")

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Stage defaults (LLaVA-1.5 scripts): stage 1 projector 1e-3; stage 2 LoRA 2e-4, projector 2e-5.
DEFAULT_LR = {1: 1e-3, 2: 2e-4}
DEFAULT_PROJECTOR_LR = {1: 1e-3, 2: 2e-5}
# Fields that may change between a run and its resumption; any other difference is refused.
RESUMABLE_CHANGES = {"max_steps", "resume", "save_every", "keep_last", "eval_every", "eval_data", "progress",
                     "num_workers"}


@dataclasses.dataclass
class TrainConfig:
    """One training stage. Defaults are LLaVA's recipe; `vlm-vision train` maps flags 1:1 onto fields."""

    llm: str
    """Base LLM: Hub id, transformers folder, or `.gguf` file (tokenizer from the same place)."""
    tower: str
    """Vision tower: Hub id, folder, or checkpoint file (`CLIPVisionTower.from_pretrained`)."""
    data: str
    """Training records, LLaVA conversation format, `.json` (a list) or `.jsonl`."""
    output_dir: str
    media_root: str | None = None
    """Folder that media paths are relative to (default: the data file's folder)."""
    stage: int = 1
    """1: projector only. 2: LoRA on the LLM + projector."""
    max_steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 1
    """Samples per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float | None = None
    """LoRA learning rate in stage 2; the projector's too when `projector_lr` is None (stage default when None)."""
    projector_lr: float | None = None
    """Projector learning rate (stage 1 default 1e-3, stage 2 default 2e-5)."""
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LORA_TARGETS
    num_frames: int = 32
    """Frames sampled uniformly from each raw video."""
    seed: int = 0
    resume: bool = False
    """Continue from the latest `checkpoint-STEP/` in `output_dir`."""
    eval_data: str | None = None
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end); needs `eval_data`."""
    save_every: int = 0
    """Write `checkpoint-STEP/` every N steps (0: never; `final/` is always written)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted."""
    mixed_precision: str = "no"
    """"no", "bf16" or "fp16" (accelerate's autocast; trainable weights stay float32)."""
    gradient_checkpointing: bool = False
    projector_type: str = "mlp2x_gelu"
    train_new_token_embeddings: bool = False
    """Train the embedding rows of `<image>`/`<video>` when they were added to the tokenizer."""
    init_from: str | None = None
    """A previous run's `final/` (e.g. stage 1) to start the projector and token rows from."""
    max_length: int = 2048
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    select_layer: int = -2
    pool_stride: int = 2
    pool_mode: str = "average"
    video_newline: str = "no_token"
    image_grid_pinpoints: list[list[int]] | None = None
    """LLaVA-NeXT "anyres" canvases for images, [height, width] multiples of the tower's image size
    (e.g. `vlm_vision.DEFAULT_PINPOINTS`); None: every image is one crop of 576 tokens (LLaVA-1.5)."""
    anyres_convention: str = "transformers"
    """"transformers" or "llava" (LLaVA's original code); see `vlm_vision.anyres`."""
    model_dtype: str = "float32"
    """dtype of the frozen tower and base LLM ("bfloat16" halves their memory on GPUs)."""
    num_workers: int = 0
    """DataLoader worker processes decoding videos."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        from vlm_vision.anyres import CONVENTIONS

        self.lora_targets = tuple(self.lora_targets)
        if self.image_grid_pinpoints is not None:  # lists, as they come back from JSON (resume compares them)
            self.image_grid_pinpoints = [[int(v) for v in p] for p in self.image_grid_pinpoints]
        if self.anyres_convention not in CONVENTIONS:
            raise ValueError(f"anyres_convention must be one of {CONVENTIONS}, got {self.anyres_convention!r}")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 (projector) or 2 (LoRA + projector), got {self.stage!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "num_frames", "max_length", "lora_r", "keep_last"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("save_every", "eval_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "projector_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.model_dtype not in DTYPES:
            raise ValueError(f"model_dtype must be one of {sorted(DTYPES)}, got {self.model_dtype!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.eval_every and not self.eval_data:
            raise ValueError(f"eval_every={self.eval_every} needs eval_data")

    @property
    def lora_lr(self) -> float | None:
        """The LoRA learning rate (None in stage 1)."""
        return (self.lr or DEFAULT_LR[2]) if self.stage == 2 else None

    @property
    def resolved_projector_lr(self) -> float:
        """`projector_lr`, else `lr`, else the stage default."""
        return self.projector_lr or self.lr or DEFAULT_PROJECTOR_LR[self.stage]


# ----- trainable parameters and the optimizer -----------------------------------------------------


def _embedding_weights(llm: nn.Module) -> list[nn.Parameter]:
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    weights = [base.get_input_embeddings().weight]
    out = base.get_output_embeddings()
    if out is not None and out.weight is not weights[0]:
        weights.append(out.weight)
    return weights


def _row_mask_hook(ids: Sequence[int]):
    # Gradients of every row but `ids` are zeroed, so AdamW (weight decay 0) never moves them.
    def hook(grad: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(grad.shape[0], 1, dtype=grad.dtype, device=grad.device)  # (V, 1)
        mask[list(ids)] = 1
        return grad * mask

    return hook


def mark_trainable(model: nn.Module, config: TrainConfig, new_token_ids: Sequence[int]) -> dict[str, int]:
    """Declare what trains, in one place; everything else is frozen.

    Trains: the projector (both stages); LoRA weights (stage 2); the image newline when the video
    layout or anyres images use it; the rows of `new_token_ids` when `config.train_new_token_embeddings` (the
    embedding matrices require grad, but a gradient hook keeps every other row at zero gradient).

    Returns:
        {parameter name: number of elements} of the trainable parameters.
    """
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if _uses_newline(config):
        model.image_newline.requires_grad_(True)
    if config.stage == 2:
        for name, param in model.llm.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
    if config.train_new_token_embeddings and new_token_ids:
        for weight in _embedding_weights(model.llm):
            weight.requires_grad_(True)
            weight.register_hook(_row_mask_hook(new_token_ids))
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def _uses_newline(config: TrainConfig) -> bool:
    """Whether the model's `image_newline` appears in its inputs (and so trains)."""
    return config.video_newline != "no_token" or config.image_grid_pinpoints is not None


def _group_of(name: str) -> str:
    if name.startswith("projector.") or name == "image_newline":
        return "projector"
    if "lora_" in name:
        return "lora"
    if "embed" in name or "lm_head" in name:
        return "new_token_rows"
    raise ValueError(f"trainable parameter {name!r} belongs to no optimizer group (projector, lora, token rows)")


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups, each with a `name`: lora (`lr`), projector and projector_no_decay
    (`projector_lr`; biases and 1-d tensors without weight decay), new_token_rows (LoRA's lr in
    stage 2, the projector's in stage 1; never decayed, so untouched rows stay bit-identical).
    """
    lr_rows = config.lora_lr if config.stage == 2 else config.resolved_projector_lr
    groups: dict[str, dict[str, Any]] = {
        "lora": {"lr": config.lora_lr, "weight_decay": config.weight_decay},
        "projector": {"lr": config.resolved_projector_lr, "weight_decay": config.weight_decay},
        "projector_no_decay": {"lr": config.resolved_projector_lr, "weight_decay": 0.0},
        "new_token_rows": {"lr": lr_rows, "weight_decay": 0.0},
    }
    members: dict[str, list[nn.Parameter]] = {name: [] for name in groups}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = _group_of(name)
        if group == "projector" and param.ndim < 2:
            group = "projector_no_decay"
        members[group].append(param)
    return [{"name": name, "params": members[name], **groups[name]} for name in groups if members[name]]


def cosine_schedule(optimizer: torch.optim.Optimizer, max_steps: int, warmup_ratio: float):
    """Linear warmup over `ceil(warmup_ratio * max_steps)` steps, then cosine decay to 0 (LLaVA's)."""
    warmup = math.ceil(warmup_ratio * max_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----- data order ---------------------------------------------------------------------------------


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation that depends on (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


def micro_batch_indices(position: int, *, num_samples: int, batch_size: int, num_processes: int,
                        process_index: int, seed: int) -> list[int]:
    """Sample indices of micro-batch number `position` (counted over all epochs) for one process.

    Each epoch is cut into global batches of `batch_size * num_processes` (an incomplete last one
    is dropped) and each process takes its slice.

    Raises:
        ValueError: when there are fewer samples than one global batch.

    Example:
        >>> micro_batch_indices(0, num_samples=4, batch_size=2, num_processes=1, process_index=0, seed=0)
        [2, 1]
    """
    global_batch = batch_size * num_processes
    per_epoch = num_samples // global_batch
    if per_epoch == 0:
        raise ValueError(f"{num_samples} usable samples are fewer than one global batch "
                         f"(batch_size {batch_size} x {num_processes} processes)")
    epoch, k = divmod(position, per_epoch)
    order = epoch_order(num_samples, seed, epoch)
    start = k * global_batch + process_index * batch_size
    return order[start: start + batch_size]


class _BatchOrder:
    """Index lists for one process from micro-batch `start` on (an endless `batch_sampler`)."""

    def __init__(self, start: int, **kwargs: int):
        self.start = start
        self.kwargs = kwargs

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        while True:
            yield micro_batch_indices(position, **self.kwargs)
            position += 1


class _ReplaceBad(torch.utils.data.Dataset):
    """Returns (example, skipped): a sample that fails to load is replaced by the next that loads."""

    def __init__(self, dataset: ConversationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Example, list[Skipped]]:
        skipped = []
        for k in range(len(self.dataset)):
            item = self.dataset[(index + k) % len(self.dataset)]
            if isinstance(item, Example):
                return item, skipped
            skipped.append(item)
        raise RuntimeError(f"none of the {len(self.dataset)} samples could be loaded; first reasons: "
                           f"{[s.reason for s in skipped[:3]]}")


def _collate(items: list[tuple[Example, list[Skipped]]]) -> tuple[list[Example], list[Skipped]]:
    # Padding happens in `model_inputs`, on the main process, where the tower lives.
    return [example for example, _ in items], [s for _, skipped in items for s in skipped]


def model_inputs(examples: Sequence[Example], pad_token_id: int, tower: nn.Module | None = None, *,
                 pool_stride: int = 2, pool_mode: str = "average") -> dict[str, Any]:
    """A padded batch in `VisionLanguageModel.forward`'s arguments.

    Media stay in prompt order: images as float[I, 3, S, S] (anyres: a list of each image's crops
    float[P_i, 3, S, S] and `image_sizes` long[I, 2]); videos as a list of frames
    float[T, 3, S, S] (`pixel_values_videos`), or, when any video of the batch is cached, a list of
    pooled tower tokens float[T, N', D_v] (`video_features`; raw videos in that batch are encoded
    here with the frozen `tower`).
    """
    from vlm_vision.fusion import encode_videos

    batch: dict[str, Any] = pad_batch(examples, pad_token_id)
    images = [e for e in examples if e.media_kind == "image"]
    videos = [e for e in examples if e.media_kind in ("video", "video_features")]
    if images and images[0].image_size is not None:  # anyres: crops per image, and the images' sizes
        batch["pixel_values"] = [e.media for e in images]  # I x (P_i, 3, S, S)
        batch["image_sizes"] = torch.tensor([e.image_size for e in images], dtype=torch.long)  # (I, 2)
    elif images:
        batch["pixel_values"] = torch.cat([e.media for e in images])  # (I, 3, S, S)
    if videos and all(e.media_kind == "video" for e in videos):
        batch["pixel_values_videos"] = [e.media for e in videos]  # V x (T, 3, S, S)
    elif videos:
        with torch.no_grad():
            batch["video_features"] = [
                e.media if e.media_kind == "video_features"
                else encode_videos(tower, [e.media.to(tower.device)], stride=pool_stride, mode=pool_mode)[0]
                for e in videos]  # V x (T, N', D_v)
    return batch


def labelled_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """`model(**batch).loss`, with the LM head run only where a label follows.

    A LLaVA batch is mostly visual tokens, and they carry no label: 32 frames give 4608 visual
    positions for a few dozen answer tokens. The loss is the same mean next-token cross-entropy
    over the labelled tokens. Only the logits of positions whose next token has a label in some
    sample are computed (`logits_to_keep`), instead of a float[B, L, V] tensor and its gradient
    (1.2 GB in float32 for 4673 positions of a 32k vocabulary). LLMs whose forward has no
    `logits_to_keep` get the plain call.
    """
    from vlm_vision.fusion import mask_labels

    base = getattr(model, "module", model)  # under DDP
    if not _takes_logits_to_keep(base.llm):
        return model(**batch).loss
    labels = mask_labels(batch["labels"], batch["input_ids"], base._placeholder_ids())  # (B, L)
    targets = labels[:, 1:]  # (B, L-1): position j predicts token j+1
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
    if keep.numel() == 0:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits  # (B, K, V)
    return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets[:, keep].flatten(),  # (B*K, V), (B*K,)
                                       ignore_index=IGNORE_INDEX)


def _takes_logits_to_keep(llm: nn.Module) -> bool:
    core = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return _forward_takes_logits_to_keep(type(core))


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(cls: type) -> bool:
    # once per class, not on every training step
    import inspect

    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in batch.items()}


# ----- the output folder --------------------------------------------------------------------------


class RunLog:
    """`log.jsonl` (one line per optimizer step and per evaluation) and `skipped.jsonl`."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.path = output_dir / "log.jsonl"
        self.skipped_path = output_dir / "skipped.jsonl"
        self.enabled = enabled

    def write(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def skipped(self, items: Sequence[Skipped], where: str) -> None:
        for s in items:
            logger.warning("skipped sample %s (%s): %s", s.id, where, s.reason)
        with self.skipped_path.open("a") as f:  # every process appends its own runtime skips
            for s in items:
                f.write(json.dumps({"id": s.id, "reason": s.reason, "where": where}) + "\n")

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, step: int) -> None:
        """Drop lines after `step` (a resumed run rewrites them), atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = [e for e in self.entries() if e["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
        tmp.replace(self.path)


def plot_loss(entries: Sequence[dict[str, Any]], path: Path) -> Path:
    """Draw training (and evaluation) loss against step into `path` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in entries if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in entries if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete `checkpoint-STEP/` with the highest step (temporary folders are never matched)."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the `keep_last` newest checkpoints."""
    found = sorted((p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for old in found[:-keep_last]:
        shutil.rmtree(old)


# ----- setup --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    model: nn.Module
    processor: Any
    spec: TrainedSpec
    dataset: ConversationDataset
    eval_dataset: ConversationDataset | None
    trainable: dict[str, int]


def _visual_spec(model: nn.Module, processor: Any, num_frames: int) -> VisualSpec:
    rows, cols = model.pooled_grid
    return VisualSpec(token_ids={"image": processor.image_token_id, "video": processor.video_token_id},
                      video_tokens=model.video_tokens, image_tokens=model.image_tokens,
                      tokens_per_frame=rows * cols, num_frames=num_frames,
                      anyres_tokens=model.num_image_tokens if model.image_grid_pinpoints is not None else None)


def _dataset(path: str, media_root: str | None, model: nn.Module, processor: Any, config: TrainConfig,
             log: RunLog, main: bool) -> ConversationDataset:
    from video import VideoDecodeError

    root = Path(media_root) if media_root else Path(path).parent
    visual = _visual_spec(model, processor, config.num_frames)
    records, skipped = scan_records(read_records(path), root, processor.tokenizer, visual, config.max_length)
    if main:
        if skipped:
            log.skipped(skipped, f"scan of {path}")
        reasons = Counter(s.reason.split(":")[0] for s in skipped)
        logger.info("%s: %d samples kept, %d skipped %s", path, len(records), len(skipped), dict(reasons))
    if not records:
        raise ValueError(f"no usable samples in {path}: all {len(skipped)} were skipped "
                         f"(first reasons: {[s.reason for s in skipped[:3]]})")
    load_anyres = None
    if model.image_grid_pinpoints is not None:
        load_anyres = functools.partial(_anyres_crops, transform=model.tower.image_transform,
                                        grid_pinpoints=model.image_grid_pinpoints, convention=model.anyres_convention)
    return ConversationDataset(
        records, processor.tokenizer, visual, max_length=config.max_length,
        load_video=functools.partial(_video_frames, num_frames=config.num_frames), load_cached=_cached_tokens,
        transform=model.tower.image_transform, load_anyres=load_anyres, decode_errors=(VideoDecodeError,))


# Module-level (picklable) loaders, so DataLoader workers can be spawned as well as forked.
def _video_frames(path: Path, num_frames: int) -> torch.Tensor:
    from video import load_video

    return load_video(path, num_frames=num_frames).frames  # (T, H, W, 3) uint8


def _anyres_crops(path: Path, transform: Any, grid_pinpoints: Sequence[Sequence[int]],
                  convention: str) -> tuple[torch.Tensor, tuple[int, int]]:
    from vlm_vision.anyres import anyres_pixel_values

    return anyres_pixel_values(path, transform, grid_pinpoints=grid_pinpoints, tile_size=transform.image_size,
                               convention=convention)  # (P, 3, S, S), (H, W)


def _cached_tokens(path: Path) -> torch.Tensor:
    from video import load_video_tokens

    return load_video_tokens(path).tokens  # (T, N', D)


def _setup(config: TrainConfig, log: RunLog, main: bool) -> _Run:
    dtype = DTYPES[config.model_dtype]
    tokenizer = load_tokenizer(config.llm)
    spec = TrainedSpec(llm=absolute_if_local(config.llm), tower=absolute_if_local(config.tower),
                       projector_type=config.projector_type, vocab_size=0, new_token_ids=[],
                       image_token_id=None, video_token_id=None, select_layer=config.select_layer,
                       pool_stride=config.pool_stride, pool_mode=config.pool_mode,
                       video_newline=config.video_newline, num_frames=config.num_frames, stage=config.stage,
                       image_grid_pinpoints=config.image_grid_pinpoints, anyres_convention=config.anyres_convention,
                       train=dataclasses.asdict(config))
    model, processor = build_base(spec, tokenizer=tokenizer, dtype=dtype)  # vocab_size 0: a fresh build
    spec.image_token_id, spec.video_token_id = processor.image_token_id, processor.video_token_id
    spec.new_token_ids = sorted(tokenizer.convert_tokens_to_ids(t) for t in processor.added_tokens)
    spec.vocab_size = model.llm.get_input_embeddings().num_embeddings
    if config.init_from:
        _init_from(model, config.init_from, spec)
    # Trainable weights live in float32 whatever the frozen parts' dtype (autocast computes in bf16/fp16).
    model.projector.float()
    if _uses_newline(config):
        model.image_newline.data = model.image_newline.data.float()
    if config.gradient_checkpointing:
        if hasattr(model.llm, "activation_checkpointing_enable"):  # the name since transformers 5.x
            model.llm.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.enable_input_require_grads()
    model.llm.config.use_cache = False
    if config.stage == 2:
        from peft import LoraConfig, get_peft_model

        spec.lora = {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                     "targets": list(config.lora_targets)}
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_targets), bias="none", task_type="CAUSAL_LM")
        model.llm = get_peft_model(model.llm, lora)
    trainable = mark_trainable(model, config, spec.new_token_ids)
    dataset = _dataset(config.data, config.media_root, model, processor, config, log, main)
    eval_dataset = _dataset(config.eval_data, config.media_root, model, processor, config, log, main) \
        if config.eval_data else None
    return _Run(model, processor, spec, dataset, eval_dataset, trainable)


def _init_from(model: nn.Module, folder: str, spec: TrainedSpec) -> None:
    init = TrainedSpec.read(folder)
    mismatched = {k: (getattr(init, k), getattr(spec, k)) for k in
                  ("projector_type", "vocab_size", "image_token_id", "video_token_id", "pool_stride", "pool_mode",
                   "video_newline")
                  if getattr(init, k) != getattr(spec, k)}
    if mismatched:
        raise ValueError(f"init_from {folder} was trained with other settings (theirs, ours): {mismatched}")
    if init.lora is not None:
        raise ValueError(f"init_from {folder} holds a LoRA adapter; merge it first (merge_trained) and train "
                         f"on the merged LLM")
    load_trained_weights(model, folder, init)


def _print_trainable(model: nn.Module, trainable: dict[str, int]) -> None:
    total = sum(p.numel() for p in model.parameters())
    by_group = Counter()
    for name, n in trainable.items():
        by_group[_group_of(name)] += n
    print(f"trainable parameters: {sum(trainable.values()):,} of {total:,} "
          f"({100 * sum(trainable.values()) / total:.3f}%)")
    for group, n in sorted(by_group.items()):
        names = [k for k in trainable if _group_of(k) == group]
        print(f"  {group}: {n:,} in {len(names)} tensors, e.g. {names[0]}")


# ----- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ConversationDataset, accelerator: Any, batch_size: int,
             pad_token_id: int, pool_stride: int, pool_mode: str) -> float:
    """Token-weighted mean loss over `dataset` (each process takes every Nth sample)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=accelerator.device)  # (loss sum, tokens)
    mine = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    for start in range(0, len(mine), batch_size):
        examples = [dataset[i] for i in mine[start: start + batch_size]]
        examples = [e for e in examples if isinstance(e, Example)]
        if not examples:
            continue
        batch = _to_device(model_inputs(examples, pad_token_id, model.tower, pool_stride=pool_stride,
                                        pool_mode=pool_mode), accelerator.device)
        with accelerator.autocast():
            loss = labelled_loss(model, batch)
        tokens = (batch["labels"][:, 1:] != -100).sum()
        total += torch.stack([loss.float() * tokens, tokens.float()])
    model.train(was_training)
    total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / total[1].clamp(min=1))


# ----- the loop -----------------------------------------------------------------------------------


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    now = dataclasses.asdict(config)
    now["lora_targets"] = list(now["lora_targets"])
    changed = {k: (saved.get(k), v) for k, v in now.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v}
    if changed:
        raise ValueError(f"cannot resume: the run was started with other settings (then, now): {changed}")


def train(config: TrainConfig) -> Path:
    """Run one training stage and return its `final/` folder.

    Writes into `config.output_dir`: `log.jsonl`, `skipped.jsonl`, `checkpoint-STEP/` every
    `save_every` steps (the last `keep_last` kept), `final/` (see `vlm_vision.trained`) and
    `loss.png`. Launch on several GPUs or machines with `accelerate launch`.

    Raises:
        ValueError: for an output folder that already holds a run (without `resume`), a resume with
            changed settings, or data with no usable sample.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
        # Text-only batches leave the projector unused; DDP must not wait for its gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    main = accelerator.is_main_process
    out = Path(config.output_dir)
    log = RunLog(out, enabled=main)
    checkpoint = latest_checkpoint(out) if config.resume else None
    # Every process checks (and raises), so none is left waiting for the others.
    if not config.resume and (log.path.exists() or latest_checkpoint(out) is not None):
        raise ValueError(f"{out} already holds a run (log.jsonl or checkpoints); pass resume=True "
                         f"(--resume) to continue it, or choose another output_dir")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # ----- setup
    set_seed(config.seed)
    run = _setup(config, log, main)
    model = run.model
    if main:
        _print_trainable(model, run.trainable)
    optimizer = torch.optim.AdamW(param_groups(model, config), betas=(0.9, 0.999))
    scheduler = cosine_schedule(optimizer, config.max_steps, config.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    # Checkpoints hold only the trainable weights (written by `save_trained`), not the whole model.
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())
    unwrapped = accelerator.unwrap_model(model)

    step, position = 0, 0
    if checkpoint is not None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        _check_resumable(state["config"], config)
        load_trained_weights(unwrapped, checkpoint, run.spec)
        accelerator.load_state(str(checkpoint))
        step, position = state["step"], state["position"]
        log.truncate(step)
        if main:
            print(f"resumed from {checkpoint} at step {step}")
    elif config.resume and main:
        print(f"no checkpoint in {out}; starting from step 0")

    pad_id = run.processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = run.processor.tokenizer.eos_token_id
    loader = torch.utils.data.DataLoader(
        _ReplaceBad(run.dataset),
        batch_sampler=_BatchOrder(position, num_samples=len(run.dataset), batch_size=config.batch_size,
                                  num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                                  seed=config.seed),
        collate_fn=_collate, num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed))  # never draws from the global RNG
    batches = iter(loader)
    params = [p for p in model.parameters() if p.requires_grad]

    def run_eval() -> None:
        if run.eval_dataset is None:
            return
        eval_loss = evaluate(unwrapped, run.eval_dataset, accelerator, config.batch_size, pad_id,
                             config.pool_stride, config.pool_mode)
        log.write({"step": step, "eval_loss": eval_loss})
        if main:
            print(f"step {step}: eval_loss {eval_loss:.4f}")

    # ----- loop
    from tqdm.auto import tqdm

    bar = tqdm(total=config.max_steps, initial=step, disable=not (main and config.progress), desc="train")
    model.train()
    while step < config.max_steps:
        started = time.perf_counter()
        losses, tokens = [], torch.zeros((), device=accelerator.device)
        for _ in range(config.grad_accum):
            examples, skipped = next(batches)
            position += 1
            if skipped:
                log.skipped(skipped, f"step {step + 1}")
            batch = _to_device(model_inputs(examples, pad_id, unwrapped.tower, pool_stride=config.pool_stride,
                                            pool_mode=config.pool_mode), accelerator.device)
            with accelerator.accumulate(model):
                loss = labelled_loss(model, batch)
                accelerator.backward(loss)
            losses.append(loss.detach().float())
            tokens += batch["attention_mask"].sum()
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}  # the rates this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        step_loss = float(accelerator.reduce(torch.stack(losses).mean(), reduction="mean"))
        tokens_per_s = float(accelerator.reduce(tokens, reduction="sum")) / (time.perf_counter() - started)
        lr = lrs.get("lora", lrs.get("projector", next(iter(lrs.values()))))
        log.write({"step": step, "loss": step_loss, "lr": lr, "projector_lr": lrs.get("projector", lr),
                   "tokens_per_s": round(tokens_per_s, 1)})
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
        if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
            run_eval()
        if config.save_every and step % config.save_every == 0:
            _save_checkpoint(accelerator, unwrapped, run, config, out, step, position)
    bar.close()

    # ----- save
    final = out / "final"
    if main:
        with atomic_dir(final) as tmp:
            save_trained(unwrapped, run.processor, run.spec, tmp)
    accelerator.wait_for_everyone()
    run_eval()
    if main:
        plot_loss(log.entries(), out / "loss.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    _release_accelerator_state()
    return final


def _release_accelerator_state() -> None:
    """Let a later `train` call in this process choose another mixed precision / accumulation.

    accelerate keeps its settings in process-wide singletons that refuse to change once set (a
    script running stage 1 in fp32 and stage 2 in bf16 would fail). The process group
    (`PartialState`) is kept: it belongs to the launcher.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _save_checkpoint(accelerator: Any, model: nn.Module, run: _Run, config: TrainConfig, out: Path, step: int,
                     position: int) -> None:
    """`checkpoint-STEP/`: trainable weights, optimizer, scheduler, RNG of every process, position.

    Every process writes into one temporary folder; the main process renames it into place once
    all are done, then prunes old checkpoints.
    """
    tmp = out / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        save_trained(model, run.processor, run.spec, tmp)
        config_dict = dataclasses.asdict(config)
        config_dict["lora_targets"] = list(config_dict["lora_targets"])
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": step, "position": position, "config": config_dict}, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, out / f"checkpoint-{step}")
        prune_checkpoints(out, config.keep_last)
    accelerator.wait_for_everyone()
