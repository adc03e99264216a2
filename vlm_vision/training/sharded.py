"""Sharded training: FSDP (PyTorch's `fully_shard`) and DeepSpeed ZeRO, and their weights saved whole.

FSDP is PyTorch's own FSDP2 (`torch.distributed.fsdp.fully_shard`), applied here when
`TrainConfig.fsdp` is set and the run has several processes (`torchrun`, or `accelerate launch`
with a multi-GPU config): each decoder layer of the LLM is one unit and the rest of the model
(embeddings, head, projector, newline) the root unit. accelerate's own FSDP plugin is not used:
it refuses to run without a GPU, so its path could not be tested on the CPU, and this one is
(gloo). The tower stays whole on every process: it is frozen, so it has no gradients and no
optimizer state to shard, only its weights (CLIP ViT-L/14-336: 304M parameters, 0.6 GB in bf16),
and sharding them would cost an all-gather of every block on every step.

DeepSpeed ZeRO-2/3 comes from accelerate's config (`examples/accelerate/zero*.yaml`); the run fills
the config's "auto" gradient clipping from `max_grad_norm`.

Why saving gathers: under FSDP and ZeRO-3 each process holds a slice of each trainable tensor, so
writing `final/` from the main process's own parameters would give partial or empty adapters.
`whole_state` gathers full copies of the trainable tensors only (FSDP:
`get_model_state_dict(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)`; ZeRO-3:
`deepspeed.zero.GatheredParameters` over the trainable parameters), never the frozen base LLM.
The frozen tensors a trained folder also holds (the newline when it does not train, the rows of
added tokens) never change, so `frozen_parts` copies them once, before sharding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from vlm_vision.model.run_folder import token_rows

__all__ = ["FrozenParts", "frozen_parts", "is_fsdp", "load_optimizer_state", "save_optimizer_state", "shard_model",
           "whole_state"]

OPTIMIZER_FILE = "optimizer_full.pt"


def shard_model(model: nn.Module, device: torch.device) -> None:
    """Shard `model` (a `VisionLanguageModel`) in place over all processes with FSDP2.

    Each decoder layer of the LLM is one unit, everything else but the tower the root unit; the
    tower's parameters are left whole (`ignored_params`). Parameters become DTensors; the
    optimizer must be built afterwards.
    """
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    model.to(device)
    for layer in _decoder_layers(model.llm):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params=set(model.tower.parameters()))


def _decoder_layers(llm: nn.Module) -> nn.ModuleList:
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    core = getattr(base, base.base_model_prefix, base)  # LlamaForCausalLM.model
    layers = getattr(core, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot shard {type(base).__name__}: its decoder layers are not at "
                         f"`{base.base_model_prefix}.layers` (as in Llama, Mistral, Qwen2)")
    return layers


def is_fsdp(model: nn.Module) -> bool:
    """Whether `model` was sharded by `shard_model`."""
    return isinstance(model, FSDPModule)


@dataclasses.dataclass
class FrozenParts:
    """What a trained folder holds that does not train, copied before sharding (it never changes)."""

    tensors: dict[str, torch.Tensor]
    """The newline (and SlowFast's `faster_token`), by parameter name, when they do not train."""
    rows: dict[str, torch.Tensor] | None
    """The added tokens' rows (`token_rows`) when the embeddings do not train; None otherwise."""


def frozen_parts(model: nn.Module, spec: Any) -> FrozenParts:
    """Copy what `save_trained` writes but does not train, before `shard_model` or accelerate's prepare."""
    params = dict(model.named_parameters())
    tensors = {name: params[name].detach().cpu().clone() for name in ("image_newline", "faster_token")
               if name in params and not params[name].requires_grad}
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    rows = None
    if spec.new_token_ids and getattr(model, "new_token_rows", None) is None:
        rows = token_rows(llm, spec.new_token_ids)
    return FrozenParts(tensors, rows)


def whole_state(model: nn.Module, frozen: FrozenParts) -> dict[str, torch.Tensor]:
    """Whole CPU copies of the trainable parameters by name, gathered from every shard, plus `frozen`.

    Collective: every process calls it. Under FSDP only the main process (rank 0) gets the
    tensors (the others an empty dict); otherwise every process does.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if is_fsdp(model):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        state = get_model_state_dict(model, options=options)
        return {**frozen.tensors, **state} if state else {}
    if any(hasattr(p, "ds_id") for _, p in trainable):  # ZeRO-3 partitions parameters in place
        import deepspeed  # lazy: optional, only DeepSpeed (ZeRO-3) runs have it installed

        with deepspeed.zero.GatheredParameters([p for _, p in trainable], modifier_rank=None):
            return {**frozen.tensors, **{n: p.detach().cpu().clone() for n, p in trainable}}
    return {**frozen.tensors, **{n: p.detach() for n, p in trainable}}


def save_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, main: bool) -> None:
    """Gather an FSDP run's optimizer state whole and write it (main process) to `folder`. Collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(model, optimizer, options=options)
    if main:
        torch.save(state, folder / OPTIMIZER_FILE)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load the whole optimizer state from `folder` into an FSDP run's sharded optimizer (each process)."""
    path = folder / OPTIMIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {OPTIMIZER_FILE}: it was not written by an fsdp run")
    state = torch.load(path, map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
