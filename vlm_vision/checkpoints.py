"""Checkpoint layouts -> the tower's own parameter names.

Each layout is a key map plus asserts: every source key of the vision tower is consumed exactly once
and every shape matches. Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import torch

__all__ = ["find_prefix", "hf_to_tower"]


def find_prefix(state_dict: dict[str, torch.Tensor], anchor: str = "embeddings.patch_embedding.weight") -> str:
    """The key prefix under which a transformers CLIP vision model lives in `state_dict`.

    transformers 4.x writes `vision_model.embeddings...` for both model classes; 5.x writes a bare
    `embeddings...` for `CLIPVisionModel`; LLaVA checkpoints nest it deeper. The patch embedding
    exists once per vision tower, so it anchors the search.

    Raises:
        KeyError: when no key, or more than one, ends with `anchor`.
    """
    hits = [k[: -len(anchor)] for k in state_dict if k.endswith(anchor)]
    if len(hits) != 1:
        raise KeyError(f"expected exactly one key ending in {anchor!r}, found {len(hits)}: {hits[:4]}")
    return hits[0]


def hf_to_tower(state_dict: dict[str, torch.Tensor], num_layers: int | None = None, *,
                prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Map transformers' `CLIPVisionModel` keys onto ours (q, k, v fused in that order).

    Args:
        state_dict: a `CLIPVisionModel` (or `CLIPModel`) state dict; keys outside `prefix` are ignored.
        num_layers: blocks in the source model (counted from the keys when None).
        prefix: where the vision model lives in the source (found with `find_prefix` when None).

    Raises:
        KeyError: naming a vision key that is missing from the source.
        ValueError: naming a vision key of the source that the map did not consume.
    """
    prefix = find_prefix(state_dict) if prefix is None else prefix
    src = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if num_layers is None:
        num_layers = len({k.split(".")[2] for k in src if k.startswith("encoder.layers.")})
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise KeyError(f"missing vision key {prefix}{key} in the checkpoint")
        used.add(key)
        return src[key]

    out = {
        "patch_embed.weight": take("embeddings.patch_embedding.weight"),
        "cls_token": take("embeddings.class_embedding"),
        "pos_embed": take("embeddings.position_embedding.weight"),
        "ln_pre.weight": take("pre_layrnorm.weight"),
        "ln_pre.bias": take("pre_layrnorm.bias"),
    }
    for i in range(num_layers):
        s, d = f"encoder.layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[d + f"attn.qkv.{part}"] = torch.cat(
                [take(s + f"self_attn.{p}_proj.{part}") for p in ("q", "k", "v")], dim=0)  # (3D, ...)
            out[d + f"attn.proj.{part}"] = take(s + f"self_attn.out_proj.{part}")
            out[d + f"ln_1.{part}"] = take(s + f"layer_norm1.{part}")
            out[d + f"ln_2.{part}"] = take(s + f"layer_norm2.{part}")
            out[d + f"mlp.fc1.{part}"] = take(s + f"mlp.fc1.{part}")
            out[d + f"mlp.fc2.{part}"] = take(s + f"mlp.fc2.{part}")
    # The pooled-CLS head (post_layernorm) and non-persistent buffers are not part of the features.
    ignorable = {"post_layernorm.weight", "post_layernorm.bias", "embeddings.position_ids"}
    left = sorted(set(src) - used - ignorable)
    if left:
        raise ValueError(f"unconsumed vision keys in the checkpoint: {[prefix + k for k in left[:8]]}")
    return out
