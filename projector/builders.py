"""Projector builders: the small table of layouts that map vision width to LLM width.

LLaVA names a projector by a short string (`mm_projector_type`): `linear`, `mlp2x_gelu` (what every
released LLaVA-1.5 / NeXT / NeXT-Video model uses), `mlp3x_gelu`, ... and `identity`. The string is
parsed here, in one place, and nowhere else.

The modules are built so that their parameter names are LLaVA's own with the `mm_projector.` prefix
removed: `linear` is a bare `nn.Linear` (`weight`, `bias`), `mlpNx_gelu` an `nn.Sequential` whose
Linear layers sit at the even indices (`0.weight`, `2.weight`, ...) with the parameter-free GELU
between them. Checkpoint conversion is then a prefix change, not a renaming table.

The GELU is the exact (erf) form: `nn.GELU()` in LLaVA, `ACT2FN["gelu"]` in transformers. The tanh
approximation differs by up to ~1e-3 per activation, enough to fail a logits parity test.

Shapes: D_in vision width (1024 for CLIP ViT-L), D_out LLM width (4096 for a 7B Llama).
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["KNOWN_KINDS", "build_projector", "parse_kind", "projector_kind"]

_MLP_KIND = re.compile(r"^mlp(\d+)x_gelu$")
KNOWN_KINDS = ("linear", "mlp<N>x_gelu (N >= 1, e.g. mlp2x_gelu)", "identity")


def parse_kind(kind: str) -> int:
    """The number of Linear layers a projector kind has (0 for `identity`).

    `linear` and `mlp1x_gelu` are the same network with different parameter names (LLaVA builds
    the first as a bare Linear and the second as a one-element Sequential), so the caller still
    needs the kind itself to build the module.

    Raises:
        ValueError: for an unknown kind, listing the known ones.

    Example:
        >>> parse_kind("mlp2x_gelu")
        2
    """
    if kind == "identity":
        return 0
    if kind == "linear":
        return 1
    match = _MLP_KIND.match(kind) if isinstance(kind, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector kind {kind!r}; known kinds: {', '.join(KNOWN_KINDS)}")
    return int(match.group(1))


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """Build a projector float[..., D_in] -> float[..., D_out] with fresh weights.

    Args:
        kind: `linear`, `mlp<N>x_gelu` with N >= 1, or `identity`.
        in_dim: vision feature width D_in.
        out_dim: LLM embedding width D_out.

    Returns:
        `nn.Linear` for `linear`, `nn.Identity` for `identity`, otherwise
        `nn.Sequential(Linear(D_in, D_out), GELU(), Linear(D_out, D_out), GELU(), ...)` with N Linears.

    Raises:
        ValueError: for an unknown kind, a non-positive width, or `identity` with `in_dim != out_dim`.

    Example:
        >>> build_projector("mlp2x_gelu", 1024, 4096)
        Sequential(
          (0): Linear(in_features=1024, out_features=4096, bias=True)
          (1): GELU(approximate='none')
          (2): Linear(in_features=4096, out_features=4096, bias=True)
        )
    """
    depth = parse_kind(kind)
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"projector widths must be positive, got in_dim={in_dim}, out_dim={out_dim}")
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"an identity projector needs in_dim == out_dim, got in_dim={in_dim}, out_dim={out_dim}")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def projector_kind(module: nn.Module) -> str:
    """The kind string of a module `build_projector` could have built (read from its structure).

    Raises:
        ValueError: when the module is not one of the built layouts.

    Example:
        >>> projector_kind(build_projector("mlp3x_gelu", 8, 16))
        'mlp3x_gelu'
    """
    if isinstance(module, nn.Identity):
        return "identity"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Sequential) and len(module) % 2 == 1:
        linears_ok = all(isinstance(m, nn.Linear) for m in module[::2])
        gelus_ok = all(isinstance(m, nn.GELU) and m.approximate == "none" for m in module[1::2])
        if linears_ok and gelus_ok:
            return f"mlp{(len(module) + 1) // 2}x_gelu"
    raise ValueError(f"not a projector layout this package builds ({', '.join(KNOWN_KINDS)}): {module}")
