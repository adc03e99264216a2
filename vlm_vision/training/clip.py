"""Contrastive fine-tuning of CLIP on image-text or video-text pairs (`vlm-vision clip-train`).

Two regimes:
  - both towers trained: plain CLIP fine-tuning;
  - image tower locked (LiT, Zhai et al., 2022): only the text tower, its projection and the
    logit scale learn. The image embeddings stay those of the pretrained model, so whatever
    already uses them (a LLaVA projector, a cached index) keeps working, and the image tower
    costs no gradient memory.

A video is one item of the batch: its sampled frames go through the image tower as images, and
the video's embedding is the mean of the frames' unit embeddings (as in zero-shot
classification), so images and videos can be mixed in one data file.

Why retrieval recall on a held-out split before *and* after: the training loss falls whenever the
model memorises its pairs; recall on pairs it never saw says whether it learned the pairing. Pairs
whose captions are identical count as matches of each other (a caption shared by several images
is no mistake to retrieve).

A bad sample does not stop a run: records with a missing caption or media file are dropped when
the data is read, media that fail to decode are dropped from their batch, and every one is counted
in `metrics.json`. Mostly bad data does stop it: once more than `max_skip_fraction` of the pairs
have been skipped (every process's, gathered each step), `TooManySkipped` names the count and the
top reasons (`vlm_vision.training.skips`, as in `vlm-vision train`). With several processes a batch
that ends up empty on any rank is skipped on all of them, so the collective calls stay in step.

Layout: this module is a job of the one training loop (`vlm_vision.training.fit`, as `vlm-vision
train` is): setup (data, model, held-out recall before) -> the loop (max_steps; one line per step in
log.jsonl; `checkpoint-STEP/` every `save_every` steps, and `resume` from the latest) -> save (model,
tokenizer, preprocessor_config.json, metrics.json).
Shapes: B pairs, T frames, L tokens, D embedding width.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from transformers import CLIPModel

from vlm_vision.data.clip_pairs import PairDataset, pair_dataset, read_pairs, split_pairs
from vlm_vision.errors import InputError
from vlm_vision.model.contrastive import LogitScale, clip_loss
from vlm_vision.data.files import Skipped
from vlm_vision.training.checkpoint import load_trainable, save_trainable
from vlm_vision.training.fit import FitSettings, Fitted, Job, MicroBatch, fit, shuffled_batches
from vlm_vision.training.log import RunLog
from vlm_vision.training.params import cosine_schedule
from vlm_vision.training.skips import SkipCeiling
from vlm_vision.model.transforms import CLIPImageTransform
from vlm_vision.model.zero_shot import average_frame_embeddings, load_clip, projected_embeddings

__all__ = ["ClipTrainConfig", "config_problems", "retrieval_metrics", "train"]

RECALL_AT = (1, 5, 10)


@dataclass
class ClipTrainConfig:
    """What `train` needs; the CLI flags map one to one onto these fields."""

    model: str
    """Hub id or folder of a `CLIPModel` with its tokenizer."""
    data: Path
    """JSON list or JSONL of {"image" or "video": path, "caption": text}."""
    media_root: Path
    """Folder the media paths in `data` are relative to."""
    output_dir: Path
    """Where the fine-tuned model and metrics.json go."""
    max_steps: int = 1000
    """Optimizer steps (the data is cycled as often as needed)."""
    batch_size: int = 32
    """Pairs per process per step; the loss sees batch_size x processes pairs."""
    lr: float = 1e-5
    """Peak AdamW learning rate."""
    lr_schedule: str = field(default="cosine", metadata={"choices": ("cosine", "constant")})
    """"cosine": linear warmup over `warmup_ratio` of the steps, then cosine decay to 0; "constant"."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming up (cosine schedule)."""
    mixed_precision: str = field(default="no", metadata={"choices": ("no", "bf16", "fp16")})
    """"no", "bf16" or "fp16" (accelerate's autocast; the weights and the saved model stay float32)."""
    lock_image_tower: bool = False
    """LiT: freeze the image tower and its projection; train text tower and logit scale."""
    eval_fraction: float = 0.1
    """Share of the pairs held out for retrieval metrics (0 disables them)."""
    seed: int = 0
    """Seed for the split, the shuffling and the initial state."""
    num_frames: int = 8
    """Frames sampled uniformly from each video."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_skip_fraction: float = 0.05
    """Stop with an error once more than this fraction of the pairs has been skipped as bad data (unreadable
    records, missing or undecodable media), listing the top reasons; 1.0 never stops."""
    save_every: int = 0
    """Write `checkpoint-STEP/` (trainable weights, optimizer, schedule, random state) every N steps (0: never)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted."""
    resume: bool = False
    """Continue from the latest `checkpoint-STEP/` in `output_dir` (the settings it started with, but for
    max_steps, save_every, keep_last and max_skip_fraction)."""



# --- model ------------------------------------------------------------------------------------------

class _DualEncoder(nn.Module):
    """CLIP's two towers and a clamped logit scale: what accelerate wraps and the optimizer updates."""

    def __init__(self, clip: CLIPModel, lock_image_tower: bool) -> None:
        super().__init__()
        self.clip = clip
        self.lock_image_tower = lock_image_tower
        self.logit_scale = LogitScale(clip.logit_scale.item())
        clip.logit_scale.requires_grad_(False)  # learned through `self.logit_scale`, copied back on save
        for module in (clip.vision_model, clip.visual_projection):
            module.requires_grad_(not lock_image_tower)

    def forward(self, pixel_values: torch.Tensor, frame_counts: list[int], input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image or video embeddings float[B, D], text embeddings float[B, D], log scale)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_image_tower):
            frames = projected_embeddings(self.clip.get_image_features(pixel_values=pixel_values))  # (sum T, D)
        visual = average_frame_embeddings(frames, frame_counts)  # (B, D)
        text = projected_embeddings(
            self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))  # (B, D)
        return visual, text, self.logit_scale()


# --- metrics ----------------------------------------------------------------------------------------

def retrieval_metrics(image_embeds: torch.Tensor, text_embeds: torch.Tensor, captions: Sequence[str] | None = None,
                      ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """Recall@k of image-to-text and text-to-image retrieval over N pairs (row i with row i).

    An item's rank is the number of wrong candidates scoring at least as high as its best right
    one (ties count against it). With `captions`, every pair with the same caption text is a right
    candidate.

    Args:
        image_embeds: float[N, D] (need not be normalised).
        text_embeds: float[N, D].
        captions: the N captions, or None when only row i matches row i.
        ks: the cut-offs.

    Returns:
        {"image_to_text_recall@1": ..., "text_to_image_recall@1": ..., ...}, each in [0, 1].

    Example:
        >>> retrieval_metrics(torch.eye(3), torch.eye(3), ks=(1,))["image_to_text_recall@1"]
        1.0
    """
    n = image_embeds.shape[0]
    if text_embeds.shape[0] != n or n == 0 or (captions is not None and len(captions) != n):
        raise ValueError(f"need N >= 1 matching rows: {n} images, {text_embeds.shape[0]} texts, "
                         f"{'no' if captions is None else len(captions)} captions")
    sim = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T  # (N, N)
    if captions is None:
        right = torch.eye(n, dtype=torch.bool)
    else:
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        label = torch.tensor([ids[c] for c in captions])
        right = label[:, None] == label[None, :]  # (N, N), symmetric
    metrics = {}
    for name, scores in (("image_to_text", sim), ("text_to_image", sim.T)):
        best_right = scores.masked_fill(~right, -math.inf).max(dim=1, keepdim=True).values  # (N, 1)
        rank = ((scores >= best_right) & ~right).sum(dim=1)  # (N,)
        for k in ks:
            metrics[f"{name}_recall@{k}"] = (rank < k).float().mean().item()
    return metrics


@torch.no_grad()
def _evaluate(encoder: _DualEncoder, dataset: PairDataset, batch_size: int, device: torch.device) -> dict[str, Any]:
    was_training = encoder.training
    encoder.eval()
    visual, text, captions = [], [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate)
    for batch in loader:
        if not batch["frame_counts"]:
            continue
        v, t, _ = encoder(**_to_device(batch, device))
        visual.append(v)
        text.append(t)
    for i in range(len(dataset)):
        if dataset.pairs[i].path not in dataset.failed:
            captions.append(dataset.pairs[i].caption)
    encoder.train(was_training)
    if not visual:
        return {"num_pairs": 0}
    metrics = retrieval_metrics(torch.cat(visual).cpu(), torch.cat(text).cpu(), captions)  # (B_all, D) each
    return {"num_pairs": len(captions), **metrics}


# --- the loop ---------------------------------------------------------------------------------------

RESUMABLE = frozenset({"max_steps", "resume", "save_every", "keep_last", "max_skip_fraction"})
"""Settings that may change between a run and its resumption; any other difference is refused."""


def train(config: ClipTrainConfig) -> dict[str, Any]:
    """Fine-tune, evaluate before and after, save; returns what is written to metrics.json.

    Raises:
        FileNotFoundError: for a missing data file or media root.
        ValueError: for bad settings, data with no usable pair, or a resume with changed settings.
    """
    bad = config_problems(config)
    if bad:
        raise ValueError("; ".join(f"{name} must be {rule}, got {getattr(config, name)!r}"
                                   for name, rule in bad.items()))
    settings = FitSettings(output_dir=Path(config.output_dir), max_steps=config.max_steps, seed=config.seed,
                           mixed_precision=config.mixed_precision, save_every=config.save_every,
                           keep_last=config.keep_last, resume=config.resume, resumable=RESUMABLE, replace_log=True,
                           name="clip-train", shown=(("loss", "loss", ".4f"), ("scale", "logit_scale", ".1f")),
                           skip_where="decoding during training")
    return fit(settings, functools.partial(_job, config))


def _job(config: ClipTrainConfig, accelerator: Accelerator, log: RunLog) -> Job[dict[str, Any]]:
    """The pairs, the dual encoder (scored on the held-out pairs before training), its loss and its saving."""
    _check_launch(accelerator)
    pairs, skipped = read_pairs(config.data, config.media_root)
    if not pairs:
        raise InputError("no usable pairs", f"--data {config.data}", f"at least one record with a caption and "
                         f"media that exist: {len(skipped)} records skipped, e.g. {skipped[:3]}")
    ceiling = SkipCeiling(len(pairs) + len(skipped), config.max_skip_fraction, str(config.data), listed_in=None)
    ceiling.add([_read_skip(line, config.data) for line in skipped], "reading the data")
    train_pairs, eval_pairs = split_pairs(pairs, config.eval_fraction, config.seed)
    clip, tokenizer, transform = load_clip(config.model)
    max_len = clip.config.text_config.max_position_embeddings
    train_set, eval_set = (pair_dataset(p, tokenizer, max_len, transform, config.num_frames)
                           for p in (train_pairs, eval_pairs))
    encoder = _DualEncoder(clip, config.lock_image_tower).to(accelerator.device)
    before = _evaluate(encoder, eval_set, config.batch_size, accelerator.device) if eval_pairs else None
    ceiling.add(_decode_skips(eval_set.failed.items(), config.data), "decoding the held-out pairs")

    def finish(fitted: Fitted) -> dict[str, Any]:
        """Score the held-out pairs again; save the model, its tokenizer and preprocessing, and metrics.json."""
        after = _evaluate(fitted.model, eval_set, config.batch_size, accelerator.device) if eval_pairs else None
        # Training skips before a resume come back from skipped.jsonl; a sample met again counts once.
        trained = [f"{s.id}: {s.reason}" for s in fitted.skipped] + [f"{p}: {e}" for p, e in train_set.failed.items()]
        reasons = skipped + list(dict.fromkeys(trained)) + [f"{p}: {e}" for p, e in eval_set.failed.items()]
        losses = fitted.losses or [None]
        metrics = {"before": before, "after": after, "steps": fitted.step, "first_loss": losses[0],
                   "final_loss": losses[-1], "logit_scale": fitted.model.logit_scale().exp().item(),
                   "num_train": len(train_pairs), "num_eval": len(eval_pairs), "skipped": len(reasons),
                   "skipped_reasons": reasons[:100], "config": _config_json(config)}
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _save(fitted.model, tokenizer, transform, metrics, Path(config.output_dir))
        accelerator.wait_for_everyone()
        return metrics

    return Job(
        model=encoder, settings=_config_json(config), skip_ceiling=ceiling,
        load_weights=functools.partial(load_trainable, encoder),
        save_weights=functools.partial(save_trainable, encoder, main=accelerator.is_main_process),
        optimizer=functools.partial(_optimizer, [p for p in encoder.parameters() if p.requires_grad], config),
        loader=functools.partial(_loader, train_set, config),
        micro_batches=functools.partial(_micro_batches, dataset=train_set, data=config.data),
        loss=_loss, entry=_entry, finish=finish)


def _optimizer(params: list[nn.Parameter], config: ClipTrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW and the schedule: warmup then cosine, or constant."""
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = (cosine_schedule(optimizer, config.max_steps, config.warmup_ratio) if config.lr_schedule == "cosine"
                else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    return optimizer, schedule


def _loader(dataset: PairDataset, config: ClipTrainConfig, position: int) -> torch.utils.data.DataLoader:
    """Shuffled batches, every epoch anew, from a generator of their own (`_micro_batches` finds `position`)."""
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True, collate_fn=dataset.collate,
                                       generator=torch.Generator().manual_seed(config.seed))


def _micro_batches(loader: Any, position: int, dataset: PairDataset, data: Path) -> Iterator[MicroBatch]:
    """The batches from batch `position` on (`shuffled_batches`), each with the decode failures met since
    the one before (the loader loads a batch ahead). The loss is a batch's mean: each batch weighs 1."""
    reported = 0  # decode failures already handed on (dicts keep their order)
    for batch, epoch_end in shuffled_batches(loader, position):
        failures = list(dataset.failed.items())[reported:]
        reported += len(failures)
        yield MicroBatch(batch, _decode_skips(failures, data), len(batch["frame_counts"]), 1.0, epoch_end)


def _loss(model: nn.Module, batch: dict[str, Any], autocast: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """CLIP's loss of the batch, and the logit scale it used."""
    with autocast():
        visual, text, log_scale = model(**batch)
    return clip_loss(visual, text, log_scale), {"logit_scale": log_scale.exp().item()}


def _entry(values: list[dict[str, Any]], lrs: dict[str, float], seconds: float) -> dict[str, Any]:
    """log.jsonl's `lr` and `logit_scale` (the one the step's loss used)."""
    return {"lr": next(iter(lrs.values())), "logit_scale": values[-1]["logit_scale"]}


def _config_json(config: ClipTrainConfig) -> dict[str, Any]:
    """The config's fields as JSON values (metrics.json and trainer_state.json record them)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


def config_problems(config: ClipTrainConfig) -> dict[str, str]:
    """Each field of `config` that no run can use -> the rule it breaks (empty: every value is usable).

    Example:
        >>> config_problems(ClipTrainConfig("m", Path("d"), Path("m"), Path("o"), max_steps=0))
        {'max_steps': 'positive'}
    """
    bad = {name: "positive" for name in ("max_steps", "batch_size", "lr", "num_frames", "keep_last")
           if not getattr(config, name) > 0}
    if config.save_every < 0:
        bad["save_every"] = ">= 0"
    if not 0 <= config.max_skip_fraction <= 1:
        bad["max_skip_fraction"] = "in [0, 1]"
    if config.weight_decay < 0:
        bad["weight_decay"] = ">= 0"
    if not 0 <= config.eval_fraction < 1:
        bad["eval_fraction"] = "in [0, 1)"
    if config.lr_schedule not in ("cosine", "constant"):
        bad["lr_schedule"] = "'cosine' or 'constant'"
    if not 0 <= config.warmup_ratio < 1:
        bad["warmup_ratio"] = "in [0, 1)"
    if config.mixed_precision not in ("no", "bf16", "fp16"):
        bad["mixed_precision"] = "'no', 'bf16' or 'fp16'"
    return bad


def _check_launch(accelerator: Accelerator) -> None:
    """Refuse a process group that accelerate does not use: the loss would gather unsharded batches."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world != accelerator.num_processes:
        raise ValueError(f"torch.distributed has {world} processes but accelerate runs {accelerator.num_processes} "
                         f"(no DDP, no data sharding); without GPUs, launch several CPU processes with "
                         f"`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N ...`")



def _read_skip(line: str, data: Path) -> Skipped:
    """A record `read_pairs` dropped ("line 3: invalid JSON ..."), as a skip of `data`."""
    where, _, reason = line.partition(": ")
    return Skipped(where, reason, str(data))


def _decode_skips(failures: Sequence[tuple[Path, str]], data: Path) -> list[Skipped]:
    """Media that failed to decode (path, why), as skips of `data`."""
    return [Skipped(str(path), why, str(data)) for path, why in failures]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _save(encoder: _DualEncoder, tokenizer: Any, transform: CLIPImageTransform, metrics: dict[str, Any],
          out: Path) -> None:
    """A folder `ZeroShotClassifier.from_pretrained` (and `CLIPModel.from_pretrained`) loads."""
    out.mkdir(parents=True, exist_ok=True)
    clip = encoder.clip
    with torch.no_grad():
        clip.logit_scale.copy_(encoder.logit_scale())  # the learned (clamped) scale goes with the model
    clip.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(_processor_config(transform), indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def _processor_config(transform: CLIPImageTransform) -> dict[str, Any]:
    """The `CLIPImageProcessor` settings that describe `transform` (crop mode)."""
    s = transform.image_size
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": s}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": s, "width": s},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(transform.mean), "image_std": list(transform.std),
        "do_convert_rgb": True,
    }
