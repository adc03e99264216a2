"""What trains, and how: `mark_trainable`, the AdamW parameter groups and the learning-rate schedule.

What trains is declared once, in `mark_trainable`, and printed at start (`print_trainable`): the
projector in both stages, LoRA in stage 2, the image newline when the layout uses it, and the
`<image>`/`<video>` embedding rows on request. The tower and the base LLM never train.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vlm_vision.model.new_token_rows import NewTokenRows
from vlm_vision.training.config import TrainConfig

__all__ = ["cosine_schedule", "mark_trainable", "param_groups", "print_trainable"]


def _base_llm(llm: nn.Module) -> nn.Module:
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def mark_trainable(model: nn.Module, config: TrainConfig, new_token_ids: Sequence[int]) -> dict[str, int]:
    """Declare what trains, in one place; everything else is frozen.

    Trains: the projector (both stages); LoRA weights (stage 2); the image newline when the video
    layout or anyres images use it; SlowFast's `faster_token` when the model has one; the rows of `new_token_ids` when `config.train_new_token_embeddings`: a `NewTokenRows`
    at `model.new_token_rows` (float[K, D] per embedding matrix, spliced in by forward hooks; the
    matrices stay frozen, so AdamW keeps state for K rows, not the whole vocabulary).

    Returns:
        {parameter name: number of elements} of the trainable parameters.
    """
    old = getattr(model, "new_token_rows", None)
    if old is not None:  # marking again: unhook the previous rows
        old.remove()
        model.new_token_rows = None
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if config.uses_newline:
        model.image_newline.requires_grad_(True)
    if model.faster_token is not None:
        model.faster_token.requires_grad_(True)
    if config.stage == 2:
        for name, param in model.llm.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
    if config.train_new_token_embeddings and new_token_ids:
        model.new_token_rows = NewTokenRows(_base_llm(model.llm), new_token_ids)  # requires grad
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def _group_of(name: str) -> str:
    if name.startswith("projector.") or name in ("image_newline", "faster_token"):
        return "projector"
    if "lora_" in name:
        return "lora"
    if name.startswith("new_token_rows."):
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


def print_trainable(model: nn.Module, trainable: dict[str, int]) -> None:
    """Print how many parameters train, by optimizer group, with an example name each."""
    total = sum(p.numel() for p in model.parameters())
    by_group = Counter()
    for name, n in trainable.items():
        by_group[_group_of(name)] += n
    print(f"trainable parameters: {sum(trainable.values()):,} of {total:,} "
          f"({100 * sum(trainable.values()) / total:.3f}%)")
    for group, n in sorted(by_group.items()):
        names = [k for k in trainable if _group_of(k) == group]
        print(f"  {group}: {n:,} in {len(names)} tensors, e.g. {names[0]}")

