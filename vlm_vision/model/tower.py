"""The frozen CLIP vision tower: pixels in, patch tokens out.

LLaVA feeds its LLM the patch tokens of CLIP's *penultimate* block (`select_layer=-2`): the last
block is tuned to CLIP's contrastive objective through the CLS token, and the layer before it keeps
more spatial detail. The CLS token is dropped (`select_feature="patch"`), leaving the 24x24 = 576
tokens of a 336 px image. Because only that layer is needed, the forward runs the blocks up to it
and stops: later blocks never run and no other hidden states are kept.

The module is numerically the same network as transformers' `CLIPVisionModel`; the parameter names
are our own (fused q/k/v like OpenAI's checkpoints), and `vlm_vision.model.vision_weights` maps every
published layout onto them.

Shapes: B images, C=3 channels, S image side, G = S / patch grid side, N = G*G patches, D width,
H heads, E head width.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig

from vlm_vision.model.checkpoint_keys import hf_to_tower
from vlm_vision.model.fp8 import FP8Linear, to_fp8
from vlm_vision.model.transforms import CLIPImageTransform
from vlm_vision.model.vision_weights import load_vision_weights

SelectFeature = Literal["patch", "cls_patch"]


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "quick_gelu": _quick_gelu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection (SDPA kernel)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads)  # (B, N, 3, H, E)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, E)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, E); scale 1/sqrt(E) as CLIP
        y = y.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        return self.proj(y)


class MLP(nn.Module):
    """A transformer block's feed-forward: fc1 -> activation -> fc2 (CLIP's key names)."""

    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation {act!r}; supported: {sorted(_ACTIVATIONS)}")
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = _ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_hidden: int, act: str, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def resolve_layer(select_layer: int, num_layers: int) -> int:
    """Turn a `hidden_states` index (negative allowed) into the number of blocks to run.

    Index 0 is the embeddings after the pre-LayerNorm, index i the output of block i-1, -1 the last
    block, -2 the penultimate one (transformers' convention: `num_layers + 1` entries).
    """
    n = num_layers + 1
    if not -n <= select_layer < n:
        raise ValueError(f"select_layer={select_layer} is out of range for a tower with {num_layers} blocks "
                         f"(valid: {-n}..{n - 1})")
    return select_layer % n


class CLIPVisionTower(nn.Module):
    """CLIP ViT image encoder returning the patch tokens of one chosen layer.

    Frozen by default: no parameter requires grad, the module stays in eval mode when a parent calls
    `.train()`, and forward builds no autograd graph. Call `unfreeze()` to fine-tune it.

    Example:
        >>> from vlm_vision import CLIPVisionTower, vision_config
        >>> tower = CLIPVisionTower.from_config(vision_config("ViT-B/32"))
        >>> tower(torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 49, 768])
    """

    def __init__(self, config: CLIPVisionConfig, *, select_layer: int = -2, select_feature: SelectFeature = "patch",
                 image_transform=None):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        d = config.hidden_size
        self.config = config
        self.select_layer = select_layer
        self.select_feature: SelectFeature = select_feature
        self.num_blocks_run = resolve_layer(select_layer, config.num_hidden_layers)
        self.patch_size = config.patch_size
        self.image_size = config.image_size
        g = config.image_size // config.patch_size
        self.grid_size = (g, g)

        self.patch_embed = nn.Conv2d(config.num_channels, d, kernel_size=self.patch_size, stride=self.patch_size,
                                     bias=False)
        self.cls_token = nn.Parameter(torch.zeros(d))
        self.pos_embed = nn.Parameter(torch.zeros(g * g + 1, d))
        self.ln_pre = nn.LayerNorm(d, eps=config.layer_norm_eps)
        # Only the blocks up to the selected layer exist: the rest would never run.
        self.blocks = nn.ModuleList(
            Block(d, config.num_attention_heads, config.intermediate_size, config.hidden_act, config.layer_norm_eps)
            for _ in range(self.num_blocks_run)
        )
        self._init_weights()
        if image_transform is None:
            image_transform = CLIPImageTransform(image_size=config.image_size)
        self.image_transform = image_transform
        self._frozen = False
        self.freeze()

    # ----- construction -------------------------------------------------------------------------

    def _init_weights(self) -> None:
        std = self.config.hidden_size ** -0.5
        nn.init.normal_(self.cls_token, std=std)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.patch_embed.weight, std=0.02)
        for block in self.blocks:
            for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)

    @classmethod
    def from_config(cls, config: CLIPVisionConfig, *, select_layer: int = -2,
                    select_feature: SelectFeature = "patch") -> "CLIPVisionTower":
        """Build the architecture of `config` with random weights."""
        return cls(config, select_layer=select_layer, select_feature=select_feature)

    @classmethod
    def from_transformers(cls, model: nn.Module, *, select_layer: int = -2,
                          select_feature: SelectFeature = "patch") -> "CLIPVisionTower":
        """Copy the weights of a transformers `CLIPVisionModel` or `CLIPModel` (any version's layout)."""
        config = getattr(model.config, "vision_config", model.config)
        tower = cls(config, select_layer=select_layer, select_feature=select_feature)
        tower.load_tower_state_dict(hf_to_tower(model.state_dict(), config.num_hidden_layers),
                                    source=type(model).__name__)
        p = next(model.parameters())
        return tower.to(device=p.device, dtype=p.dtype)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, select_layer: int = -2,
                        select_feature: SelectFeature = "patch", dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "CLIPVisionTower":
        """Load a tower from a Hub id, a transformers folder, or an OpenAI/OpenCLIP/LLaVA checkpoint.

        The format is detected from the files; see `vlm_vision.model.vision_weights.load_vision_weights`.
        """
        config, state_dict, transform = load_vision_weights(name_or_path)
        # Like transformers, float32 unless a dtype is asked for, whatever the file stores. Cast one
        # tensor at a time, so that the file's copy of each is freed as its cast is made: the peak
        # stays at one copy of the weights instead of the file's plus the cast's.
        # Blocks past the selected layer are dropped here, before they are cast.
        dtype, blocks_run = dtype or torch.float32, resolve_layer(select_layer, config.num_hidden_layers)
        for key in list(state_dict):
            tensor = state_dict.pop(key)
            if not _is_unused_block(key, blocks_run):
                state_dict[key] = tensor.to(device=device, dtype=dtype)
        # Built on the meta device: no random initialisation, and the loaded tensors become the
        # parameters (assign) instead of being copied into a second set of buffers.
        with torch.device("meta"):
            tower = cls(config, select_layer=select_layer, select_feature=select_feature, image_transform=transform)
        tower.load_tower_state_dict(state_dict, source=str(name_or_path), assign=True)
        return tower.to(device=device, dtype=dtype)

    def load_tower_state_dict(self, state_dict: dict[str, torch.Tensor], *, source: str = "state dict",
                              assign: bool = False) -> None:
        """Load weights in our own layout, ignoring blocks past the selected layer.

        With `assign=True` the given tensors become the parameters (for a tower built on the meta
        device); they keep the tower's frozen or trainable state.

        Raises:
            ValueError: naming any missing, unexpected or mis-shaped key.
        """
        own = self.state_dict()
        kept = {k: v for k, v in state_dict.items() if not _is_unused_block(k, self.num_blocks_run)}
        missing = sorted(set(own) - set(kept))
        unexpected = sorted(set(kept) - set(own))
        if missing or unexpected:
            raise ValueError(f"{source}: tower weights do not match the architecture; "
                             f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                             f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
        for k, v in kept.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict(kept, strict=True, assign=assign)
        if assign:
            self.requires_grad_(not self._frozen)

    # ----- freezing -----------------------------------------------------------------------------

    def freeze(self) -> "CLIPVisionTower":
        """Stop gradients and keep the tower in eval mode (the default)."""
        self._frozen = True
        self.requires_grad_(False)
        super().train(False)
        return self

    def unfreeze(self) -> "CLIPVisionTower":
        """Let the tower be fine-tuned: parameters require grad and `.train()` works again."""
        if self.is_fp8:
            raise ValueError("this tower runs FP8 matmuls (to_fp8()), which are inference only; "
                             "load it again to fine-tune it")
        self._frozen = False
        self.requires_grad_(True)
        return self

    @property
    def frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> "CLIPVisionTower":
        # A parent's `.train()` must not switch a frozen tower out of eval mode.
        return super().train(False if self._frozen else mode)

    # ----- attributes ---------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches(self) -> int:
        """Tokens per image: G*G, plus one with `select_feature="cls_patch"`."""
        g_h, g_w = self.grid_size
        return g_h * g_w + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embed.weight.device

    @property
    def is_fp8(self) -> bool:
        """Whether `to_fp8()` turned the blocks' matmuls into FP8 ones."""
        return any(isinstance(m, FP8Linear) for m in self.modules())

    def to_fp8(self) -> "CLIPVisionTower":
        """Opt in to FP8 matmuls in the blocks (frozen bfloat16 towers; see `vlm_vision.model.fp8`); returns self.

        Example:
            >>> tower = CLIPVisionTower.from_config(vision_config("ViT-B/32")).to(torch.bfloat16).to_fp8()
            >>> tower(torch.zeros(1, 3, 224, 224)).dtype
            torch.bfloat16
        """
        return to_fp8(self)

    def compile(self, **kwargs) -> "CLIPVisionTower":
        """Opt in to `torch.compile` for every later call (kwargs go to `torch.compile`); returns self.

        Example:
            >>> tower = CLIPVisionTower.from_config(vision_config("ViT-B/32")).compile(mode="max-autotune")  # doctest: +SKIP
        """
        super().compile(**kwargs)
        return self

    # ----- forward ------------------------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            pixel_values: float[B, 3, S, S], normalised as `image_transform` produces.

        Returns:
            float[B, N, D] in the tower's dtype: the selected layer's patch tokens (N = G*G), with the
            CLS token first when `select_feature="cls_patch"` (N = G*G + 1).
        """
        self._check_pixels(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            return self._encode(pixel_values.to(device=self.device, dtype=self.dtype))

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b = pixel_values.shape[0]
        x = self.patch_embed(pixel_values)  # (B, D, G, G)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(b, 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1+N, D)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return x[:, 1:] if self.select_feature == "patch" else x  # (B, N, D) or (B, 1+N, D)

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor float[B, 3, {self.image_size}, {self.image_size}], "
                            f"got {type(pixel_values).__name__}")
        s = self.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(f"pixel_values must have shape [B, 3, {s}, {s}], got {list(pixel_values.shape)}; "
                             f"preprocess images with tower.image_transform")
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values must be floating point (normalised), got {pixel_values.dtype}; "
                            f"preprocess uint8 images with tower.image_transform")


def _is_unused_block(key: str, num_blocks_run: int) -> bool:
    if not key.startswith("blocks."):
        return False
    return int(key.split(".")[1]) >= num_blocks_run
