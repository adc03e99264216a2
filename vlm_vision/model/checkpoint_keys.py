"""Key maps from the published CLIP ViT layouts onto the tower's own parameter names, and the shape checks.

Two layouts hold every CLIP ViT checkpoint (see `vlm_vision.model.vision_weights` for the files):

  - transformers: `embeddings.patch_embedding.weight`, separate `q_proj/k_proj/v_proj`, under a
    prefix that depends on the model class, the version and the LLaVA nesting (`find_prefix`).
  - OpenAI / OpenCLIP: `visual.conv1.weight`, `visual.transformer.resblocks.N.attn.in_proj_weight`.

Each is a key map plus asserts (all pure: state dict in, state dict out): every vision key of the
source is consumed exactly once (the pooled-CLS head `ln_post`/`post_layernorm` and `proj` are
consumed as "unused"), and `check_shapes` checks every tensor's shape against the architecture,
naming the source key. Without a declared config the architecture is read off the shapes
(`infer_vision_config`): width = patch-conv output channels, patch = its kernel, image side =
patch * sqrt(positions - 1), blocks = number of blocks, MLP width = first MLP's rows, heads =
width / 64 (every CLIP ViT uses 64-wide heads).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch
from transformers import CLIPVisionConfig

from projector.weight_files import StateDict

__all__ = ["HEAD_WIDTH", "HF_BLOCK_KEYS", "KeyMap", "check_shapes", "count_blocks", "find_prefix", "hf_key_map",
           "hf_to_tower", "infer_vision_config", "openai_key_map", "openai_to_tower"]

HEAD_WIDTH = 64  # every released CLIP ViT has 64-wide attention heads
# Our key -> the source's, each with a `.weight` and a `.bias`: the stem, and each block.
# q, k and v are fused separately (transformers keeps them apart, OpenAI stacks them already).
_HF_STEM = {"ln_pre": "pre_layrnorm"}
_OPENAI_STEM = {"ln_pre": "ln_pre"}
HF_BLOCK_KEYS = {"attn.proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_OPENAI_BLOCK_KEYS = {"attn.proj": "attn.out_proj", "ln_1": "ln_1", "ln_2": "ln_2", "mlp.fc1": "mlp.c_fc",
                      "mlp.fc2": "mlp.c_proj"}


class KeyMap:
    """Takes source keys under a prefix, remembering which were used and where each output came from."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], prefix: str):
        self.prefix = prefix
        self.src = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.used: set[str] = set()
        self.out: StateDict = {}
        self.origin: dict[str, str] = {}  # our key -> source key(s), for error messages

    def take(self, key: str) -> torch.Tensor:
        if key not in self.src:
            raise KeyError(f"missing vision key {self.prefix}{key} in the checkpoint")
        self.used.add(key)
        return self.src[key]

    def put(self, ours: str, *keys: str) -> None:
        """Map one source key onto ours, or several stacked along dim 0 (q, k, v -> qkv)."""
        tensors = [self.take(k) for k in keys]
        if len({t.shape for t in tensors}) > 1:
            raise ValueError("cannot fuse keys of different shapes: "
                             + ", ".join(f"{self.prefix}{k} {tuple(t.shape)}" for k, t in zip(keys, tensors)))
        self.out[ours] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)  # (3D, ...)
        self.origin[ours] = " + ".join(self.prefix + k for k in keys)

    def put_modules(self, ours: str, theirs: str, names: Mapping[str, str]) -> None:
        """Map each `weight` and `bias` of the modules `names` (ours -> theirs) under two prefixes."""
        for mine, source in names.items():
            for part in ("weight", "bias"):
                self.put(f"{ours}{mine}.{part}", f"{theirs}{source}.{part}")

    def finish(self, ignorable: Iterable[str]) -> None:
        left = sorted(set(self.src) - self.used - set(ignorable))
        if left:
            raise ValueError(f"unconsumed vision keys in the checkpoint (not part of a CLIP ViT this tower knows): "
                             f"{[self.prefix + k for k in left[:8]]}{' ...' if len(left) > 8 else ''}")


def find_prefix(state_dict: Mapping[str, torch.Tensor], anchor: str = "embeddings.patch_embedding.weight") -> str:
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


def count_blocks(keys: Iterable[str], head: str, tail: str) -> int:
    """How many distinct block indices N the keys `{head}N.{tail}` name."""
    found = {int(m.group(1)) for k in keys if (m := re.fullmatch(re.escape(head) + r"(\d+)\." + re.escape(tail), k))}
    return len(found)


def hf_key_map(state_dict: Mapping[str, torch.Tensor], prefix: str | None = None,
               num_layers: int | None = None) -> KeyMap:
    """The consumed `KeyMap` of a transformers CLIP vision model (see `hf_to_tower`)."""
    prefix = find_prefix(state_dict) if prefix is None else prefix
    m = KeyMap(state_dict, prefix)
    if num_layers is None:
        num_layers = count_blocks(m.src, "encoder.layers.", "layer_norm1.weight")
    m.put("patch_embed.weight", "embeddings.patch_embedding.weight")
    m.put("cls_token", "embeddings.class_embedding")
    m.put("pos_embed", "embeddings.position_embedding.weight")
    m.put_modules("", "", _HF_STEM)
    for i in range(num_layers):
        s, d = f"encoder.layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            m.put(d + f"attn.qkv.{part}", *(s + f"self_attn.{p}_proj.{part}" for p in ("q", "k", "v")))
        m.put_modules(d, s, HF_BLOCK_KEYS)
    # The pooled-CLS head (post_layernorm) and the non-learned position ids are not part of the features.
    m.finish({"post_layernorm.weight", "post_layernorm.bias", "embeddings.position_ids"})
    return m


def hf_to_tower(state_dict: Mapping[str, torch.Tensor], num_layers: int | None = None, *,
                prefix: str | None = None) -> StateDict:
    """Map transformers' `CLIPVisionModel` keys onto ours (q, k, v fused in that order).

    Args:
        state_dict: a `CLIPVisionModel` (or `CLIPModel`, or LLaVA) state dict; keys outside
            `prefix` are ignored.
        num_layers: blocks in the source model (counted from the keys when None).
        prefix: where the vision model lives in the source (found with `find_prefix` when None).

    Raises:
        KeyError: naming a vision key that is missing from the source.
        ValueError: naming a vision key of the source that the map did not consume.
    """
    return hf_key_map(state_dict, prefix, num_layers).out


def openai_key_map(state_dict: Mapping[str, torch.Tensor], prefix: str) -> KeyMap:
    """The consumed `KeyMap` of an OpenAI/OpenCLIP image tower (see `openai_to_tower`)."""
    m = KeyMap(state_dict, prefix)
    m.put("patch_embed.weight", "conv1.weight")
    m.put("cls_token", "class_embedding")
    m.put("pos_embed", "positional_embedding")
    m.put_modules("", "", _OPENAI_STEM)
    for i in range(count_blocks(m.src, "transformer.resblocks.", "attn.in_proj_weight")):
        s, d = f"transformer.resblocks.{i}.", f"blocks.{i}."
        m.put(d + "attn.qkv.weight", s + "attn.in_proj_weight")  # q, k, v already stacked: (3D, D)
        m.put(d + "attn.qkv.bias", s + "attn.in_proj_bias")
        m.put_modules(d, s, _OPENAI_BLOCK_KEYS)
    # ln_post and proj turn the CLS output into the contrastive embedding; the features never use them.
    m.finish({"ln_post.weight", "ln_post.bias", "proj"})
    return m


def openai_to_tower(state_dict: Mapping[str, torch.Tensor], *, prefix: str = "visual.") -> StateDict:
    """Map OpenAI/OpenCLIP `visual.*` keys of a CLIP ViT onto ours.

    `attn.in_proj_weight` already stacks q, k, v along dim 0, which is our fused `qkv` layout.

    Args:
        state_dict: an OpenAI or OpenCLIP state dict; keys outside `prefix` (the text tower,
            `logit_scale`) are ignored.
        prefix: where the image tower lives.

    Raises:
        KeyError: naming a vision key that is missing from the source.
        ValueError: naming a vision key of the source that the map did not consume.
    """
    return openai_key_map(state_dict, prefix).out


# ----- architecture: from shapes, or checked against a declared config -------------------------------


def infer_vision_config(tower_state_dict: Mapping[str, torch.Tensor], *, hidden_act: str = "quick_gelu",
                        head_width: int = HEAD_WIDTH, layer_norm_eps: float = 1e-5) -> CLIPVisionConfig:
    """Read a CLIP ViT's architecture off the shapes of its weights (in our layout).

    Args:
        tower_state_dict: weights as `hf_to_tower`/`openai_to_tower` return them.
        hidden_act: the MLP activation (not visible in shapes).
        head_width: attention head width; heads = width / head_width.
        layer_norm_eps: LayerNorm epsilon (not visible in shapes).

    Raises:
        ValueError: if the shapes do not describe a square-patch ViT with a square grid.
    """
    d, c, p_h, p_w = tower_state_dict["patch_embed.weight"].shape  # (D, C, P, P)
    if p_h != p_w:
        raise ValueError(f"patch_embed.weight has a non-square kernel {p_h}x{p_w}")
    n_pos = tower_state_dict["pos_embed"].shape[0]  # 1 + G*G
    g = math.isqrt(n_pos - 1)
    if g * g != n_pos - 1:
        raise ValueError(f"pos_embed has {n_pos} rows, which is not 1 + a square number of patches")
    layers = count_blocks(tower_state_dict, "blocks.", "attn.qkv.weight")
    mlp = tower_state_dict["blocks.0.mlp.fc1.weight"].shape[0] if layers else 4 * d
    if d % head_width:
        raise ValueError(f"width {d} is not a multiple of the head width {head_width}")
    return CLIPVisionConfig(hidden_size=d, intermediate_size=mlp, num_hidden_layers=layers,
                            num_attention_heads=d // head_width, num_channels=c, image_size=g * p_h,
                            patch_size=p_h, hidden_act=hidden_act, layer_norm_eps=layer_norm_eps)


def _expected_shapes(config: CLIPVisionConfig) -> dict[str, tuple[int, ...]]:
    d, i, p = config.hidden_size, config.intermediate_size, config.patch_size
    n = (config.image_size // p) ** 2
    shapes = {"patch_embed.weight": (d, config.num_channels, p, p), "cls_token": (d,), "pos_embed": (n + 1, d),
              "ln_pre.weight": (d,), "ln_pre.bias": (d,)}
    for b in range(config.num_hidden_layers):
        shapes |= {f"blocks.{b}.attn.qkv.weight": (3 * d, d), f"blocks.{b}.attn.qkv.bias": (3 * d,),
                   f"blocks.{b}.attn.proj.weight": (d, d), f"blocks.{b}.attn.proj.bias": (d,),
                   f"blocks.{b}.ln_1.weight": (d,), f"blocks.{b}.ln_1.bias": (d,),
                   f"blocks.{b}.ln_2.weight": (d,), f"blocks.{b}.ln_2.bias": (d,),
                   f"blocks.{b}.mlp.fc1.weight": (i, d), f"blocks.{b}.mlp.fc1.bias": (i,),
                   f"blocks.{b}.mlp.fc2.weight": (d, i), f"blocks.{b}.mlp.fc2.bias": (d,)}
    return shapes


def check_shapes(config: CLIPVisionConfig, m: KeyMap, source: str) -> None:
    """Every converted tensor has the shape `config` implies; the error names the source key.

    Raises:
        ValueError: naming the first mis-shaped source key, or the keys missing or extra.
    """
    expected = _expected_shapes(config)
    for k, shape in expected.items():  # embeddings first: the most telling mismatch comes first
        if k in m.out and tuple(m.out[k].shape) != shape:
            raise ValueError(f"{source}: {m.origin[k]} has shape {tuple(m.out[k].shape)}, "
                             f"expected {shape} for this architecture")
    missing = sorted(set(expected) - set(m.out), key=_natural)
    extra = sorted(set(m.out) - set(expected), key=_natural)
    if missing or extra:
        blocks = count_blocks(m.out, "blocks.", "attn.qkv.weight")
        raise ValueError(f"{source}: the config has {config.num_hidden_layers} blocks, the weights {blocks}; "
                         f"missing {missing[:4]}, extra {[m.origin[k] for k in extra[:4]]}")


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]
