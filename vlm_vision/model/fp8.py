"""Opt-in FP8 matmuls for the frozen tower (FP8 tensor cores: H100/H200 and newer).

`to_fp8(tower)` swaps every Linear of the tower's blocks (q/k/v, attention output, both MLP layers:
almost all of its FLOPs) for an `FP8Linear`. The weight is stored once in float8_e4m3fn with one
scale per output channel; each input row (one token) is quantised on the fly with its own scale
(dynamic row-wise scaling); `torch._scaled_mm` multiplies in FP8, accumulates in float32 and writes
bfloat16. The patch embedding, LayerNorms and attention itself (SDPA) stay in bfloat16.

Inference only: the tower must be frozen and in bfloat16. The features move by the FP8 rounding
of weights and activations (3 mantissa bits); `benchmarks/bench_tower.py --fp8` reports how far
they land from the bfloat16 features. It also runs on the CPU (slowly), which is how it is tested.

Shapes: M rows (tokens of all images), K input width, O output width.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FP8Linear", "quantize_rowwise", "to_fp8"]

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448.0
_ALIGN = 16  # _scaled_mm wants K and O (and, to be safe, M) multiples of 16 on CUDA


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise float[M, K] to float8_e4m3fn, one scale per row: x ~= q * scale.

    Returns:
        (q float8_e4m3fn[M, K], scale float32[M, 1]); a row's largest magnitude maps to 448.
        An all-zero row gets a tiny positive scale and zeros.
    """
    if x.dim() != 2:
        raise ValueError(f"quantize_rowwise expects a 2-D tensor, got shape {tuple(x.shape)}")
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)  # (M, 1)
    scale = amax / FP8_MAX  # (M, 1)
    q = (x / scale.to(x.dtype)).clamp(-FP8_MAX, FP8_MAX).to(FP8)  # (M, K)
    return q, scale


class FP8Linear(nn.Module):
    """A frozen `nn.Linear` whose matmul runs in FP8 (weights per output channel, inputs per row)."""

    def __init__(self, linear: nn.Linear, *, out_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        o, k = linear.weight.shape
        if k % _ALIGN or o % _ALIGN:
            raise ValueError(f"FP8 matmuls need both widths to be multiples of {_ALIGN}; this Linear is "
                             f"{k} -> {o}")
        q, scale = quantize_rowwise(linear.weight.detach())  # (O, K), (O, 1)
        self.in_features, self.out_features, self.out_dtype = k, o, out_dtype
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, O)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != FP8:
            raise TypeError(f"FP8Linear weight is {self.weight.dtype}, expected {FP8}: the module was cast after "
                            "to_fp8(); cast the tower before converting it")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"FP8Linear expects inputs of width {self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)  # (M, K)
        m = rows.shape[0]
        pad = -m % _ALIGN
        if pad:
            rows = torch.cat([rows, rows.new_zeros(pad, self.in_features)])  # (M + pad, K)
        q, scale = quantize_rowwise(rows)
        y = torch._scaled_mm(q, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias,
                             out_dtype=self.out_dtype)  # (M + pad, O)
        return y[:m].view(*lead, self.out_features)  # (..., O)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, out_dtype={self.out_dtype}"


def to_fp8(tower: nn.Module) -> nn.Module:
    """Replace the Linear layers of `tower.blocks` with `FP8Linear`, in place; returns the tower.

    Raises:
        ValueError: if the tower is not frozen, not bfloat16, or a width is not a multiple of 16.
    """
    if not getattr(tower, "frozen", False):
        raise ValueError("to_fp8() is for inference: freeze the tower first (tower.freeze())")
    if tower.dtype != torch.bfloat16:
        raise ValueError(f"to_fp8() needs a bfloat16 tower, this one is {tower.dtype}; "
                         "load it with dtype=torch.bfloat16 or call .to(torch.bfloat16) first")
    for block in tower.blocks:
        for parent, name in ((block.attn, "qkv"), (block.attn, "proj"), (block.mlp, "fc1"), (block.mlp, "fc2")):
            linear = getattr(parent, name)
            if isinstance(linear, nn.Linear):
                setattr(parent, name, FP8Linear(linear))
    return tower
