"""From examples to the loss: the padded model inputs of a batch, the labelled loss, evaluation.

`labelled_loss` and `vlm_vision.evaluation.answers`'s option scoring both run the LM head only where a
label follows, when the LLM's forward takes `logits_to_keep` (`vlm_vision.model.llm.takes_logits_to_keep`).

Shapes: B batch, L sequence, K kept positions, V vocabulary (logits) or videos (lists), I images,
P crops, T frames, S image side, N' pooled tokens per frame, D_v tower width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vlm_vision.model.anyres import BASE_RESOLUTION
from vlm_vision.model.fusion_steps import encode_videos, mask_labels
from vlm_vision.model.llm import takes_logits_to_keep
from vlm_vision.model.placeholders import IGNORE_INDEX
from vlm_vision.data.examples import ConversationDataset, Example, pad_batch

__all__ = ["evaluate", "label_count", "labelled_loss", "model_inputs", "step_loss_scale", "to_device"]


def model_inputs(examples: Sequence[Example], pad_token_id: int, tower: nn.Module | None = None, *,
                 pool_stride: int = 2, pool_mode: str = "average",
                 stride_for: Callable[[int], int] | None = None) -> dict[str, Any]:
    """A padded batch in `VisionLanguageModel.forward`'s arguments.

    Media stay in prompt order: images as float[I, 3, S, S] (anyres: a list of each image's crops
    float[P_i, 3, S, S] and `image_sizes` long[I, 2]); videos as a list of frames
    float[T, 3, S, S] (`pixel_values_videos`), or, when any video of the batch is cached, a list of
    pooled tower tokens float[T, N', D_v] (`video_features`; raw videos in that batch are encoded
    here with the frozen `tower`, at `stride_for(T)` when the model has a token budget, else `pool_stride`).
    """
    batch: dict[str, Any] = pad_batch(examples, pad_token_id)
    images = [e for e in examples if e.media_kind == "image"]
    videos = [e for e in examples if e.media_kind in ("video", "video_features")]
    if images and images[0].image_size is not None:  # anyres: crops per image, and the images' sizes
        crops, sizes = [], []
        for e in images:  # several images of one record: each one base crop, size BASE_RESOLUTION
            crops += [e.media] if e.image_size != BASE_RESOLUTION else list(e.media.split(1))  # (P_i, 3, S, S)
            sizes += [e.image_size] * (1 if e.image_size != BASE_RESOLUTION else len(e.media))
        batch["pixel_values"] = crops  # I x (P_i, 3, S, S)
        batch["image_sizes"] = torch.tensor(sizes, dtype=torch.long)  # (I, 2)
    elif images:
        batch["pixel_values"] = torch.cat([e.media for e in images])  # (I, 3, S, S)
    clips = [(e.media_kind, m) for e in videos for m in (e.media if isinstance(e.media, list) else [e.media])]
    if clips and all(kind == "video" for kind, _ in clips):
        batch["pixel_values_videos"] = [m for _, m in clips]  # V x (T, 3, S, S)
    elif clips:
        with torch.no_grad():
            batch["video_features"] = [
                m if kind == "video_features"
                else encode_videos(tower, [m.to(tower.device)], mode=pool_mode,
                                   stride=stride_for(m.shape[0]) if stride_for else pool_stride)[0]
                for kind, m in clips]  # V x (T, N', D_v)
    return batch


def labelled_loss(model: nn.Module, batch: dict[str, Any], reduction: str = "mean") -> torch.Tensor:
    """`model(**batch).loss`, with the LM head run only where a label follows.

    A LLaVA batch is mostly visual tokens, and they carry no label: 32 frames give 4608 visual
    positions for a few dozen answer tokens. The loss is the same next-token cross-entropy over the
    labelled tokens. Only the logits of positions whose next token has a label in some sample are
    computed (`logits_to_keep`), instead of a float[B, L, V] tensor and its gradient (1.2 GB in
    float32 for 4673 positions of a 32k vocabulary). LLMs whose forward has no `logits_to_keep` get
    the plain call.

    Args:
        reduction: "mean" over the batch's labelled tokens (transformers' loss), or "sum" (what the
            training loop divides by the token count of the whole optimizer step; a batch without
            labels then gives an exact zero that still depends on every trainable weight it used).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    base = getattr(model, "module", model)  # under DDP
    labels = mask_labels(batch["labels"], batch["input_ids"], base.placeholder_ids())  # (B, L)
    targets = labels[:, 1:]  # (B, L-1): position j predicts token j+1
    count = int((targets != IGNORE_INDEX).sum())
    if reduction == "sum" and count == 0:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits.float().sum() * 0.0
    if not takes_logits_to_keep(base.llm):
        loss = model(**batch).loss  # the mean over `count` tokens
        return loss * count if reduction == "sum" else loss
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
    if keep.numel() == 0:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits  # (B, K, V)
    return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets[:, keep].flatten(),  # (B*K, V), (B*K,)
                                       ignore_index=IGNORE_INDEX, reduction=reduction)


def label_count(examples: Sequence[Example], placeholder_ids: Sequence[int]) -> int:
    """How many tokens the loss of `examples` sums over: labelled, not visual, not a sample's first.

    The same count as `labelled_loss` takes from the padded batch (padding is on the right and
    carries no label), but without building the batch or touching its media.
    """
    ids = torch.tensor(list(placeholder_ids), dtype=torch.long)
    return sum(int(((e.labels[1:] != IGNORE_INDEX) & ~torch.isin(e.input_ids[1:], ids)).sum()) for e in examples)


def step_loss_scale(step_tokens: int, num_processes: int, grad_accum: int) -> float:
    """The factor that turns a micro-batch's summed loss into its share of the step's mean loss.

    A step's loss is the cross-entropy summed over every labelled token of all its micro-batches on
    all processes, divided by their number `step_tokens`: what one batch holding all the step's
    samples gives. Each process backpropagates its micro-batches' sums times this factor; DDP then
    averages gradients over processes (hence `num_processes`) and `accelerator.backward` divides by
    `grad_accum` (hence `grad_accum`).

    Example:
        >>> step_loss_scale(40, num_processes=2, grad_accum=2)
        0.1
    """
    return num_processes * grad_accum / max(step_tokens, 1)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """`batch` with its tensors (and lists of tensors) moved to `device`."""
    return {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ConversationDataset, accelerator: Any, batch_size: int,
             pad_token_id: int, pool_stride: int, pool_mode: str) -> float:
    """Token-weighted mean loss over `dataset` (each process takes every Nth sample).

    Every process runs the same number of batches: under FSDP each forward gathers shards from
    all processes, so a process whose share ran out (or whose batch failed to load) runs a
    loadable sample whose loss is not counted.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=accelerator.device)  # (loss sum, tokens)
    mine = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    share = math.ceil(len(dataset) / accelerator.num_processes)
    for start in range(0, share, batch_size):
        examples = [e for e in (dataset[i] for i in mine[start: start + batch_size]) if isinstance(e, Example)]
        counted = bool(examples)
        batch = to_device(model_inputs(examples or [_first_loadable(dataset)], pad_token_id, model.tower,
                                       pool_stride=pool_stride, pool_mode=pool_mode,
                                       stride_for=model.video_layout.stride_for), accelerator.device)
        with accelerator.autocast():
            loss = labelled_loss(model, batch, reduction="sum")
        if counted:
            total += torch.tensor([float(loss), label_count(examples, model.placeholder_ids())], device=total.device)
    model.train(was_training)
    total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / total[1].clamp(min=1))


def _first_loadable(dataset: ConversationDataset) -> Example:
    for i in range(len(dataset)):
        if isinstance(item := dataset[i], Example):
            return item
    raise RuntimeError(f"none of the {len(dataset)} evaluation samples could be loaded")
