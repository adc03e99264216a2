"""CLIP's symmetric contrastive loss, and the learnable temperature it is scaled by.

A batch of B matching (image, text) pairs gives a B x B table of cosine similarities whose
diagonal holds the true pairs. Each row is a B-way classification "which text goes with this
image?", each column "which image goes with this text?", and the loss is the mean of the two
cross-entropies (Radford et al., 2021). Unrelated features give about log(B); a perfect match at
a high scale gives about 0.

The similarities are multiplied by a learned scale before the softmax. CLIP learns its logarithm
(so it stays positive and moves multiplicatively), starts it at log(1 / 0.07) ~= 2.659 and never
lets the scale pass 100: past that the softmax saturates and training becomes unstable.

Why gather across processes: the negatives of a row are the other texts in the batch, so a
bigger batch is a harder and more useful task. With several processes, each one gathers every
rank's features and scores its *local* rows against the *global* columns (labels offset by the
number of rows on the ranks before it). The gather is differentiable: its backward sums every
rank's gradient for a slice and hands it to the rank that owns the slice, so each rank's features
also receive the gradient of being a negative on the other ranks. With DDP's gradient averaging
this is exactly the gradient of the loss on the concatenated global batch.

Shapes: B local batch, G global batch (all ranks), D embedding width.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["INIT_LOGIT_SCALE", "MAX_LOGIT_SCALE", "LogitScale", "clip_loss"]

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # temperature 0.07, CLIP's starting value
MAX_LOGIT_SCALE = math.log(100.0)  # the scale exp(logit_scale) never exceeds 100


class LogitScale(nn.Module):
    """The learnable log of CLIP's logit scale, clamped so that the scale never exceeds 100.

    Args:
        init_value: the starting log scale (default log(1 / 0.07)).

    Example:
        >>> scale = LogitScale()
        >>> round(scale().exp().item(), 2)
        14.29
    """

    def __init__(self, init_value: float = INIT_LOGIT_SCALE) -> None:
        super().__init__()
        if not math.isfinite(init_value):
            raise ValueError(f"init_value must be a finite number, got {init_value!r}")
        self.log_scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self) -> torch.Tensor:
        """The log scale, a 0-d tensor, clamped to at most log(100)."""
        return self.log_scale.clamp(max=MAX_LOGIT_SCALE)

    def extra_repr(self) -> str:
        return f"scale={self.log_scale.exp().item():.3f}, max=100"


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching image/text pairs, row i with row i.

    Features need not be normalised; they are L2-normalised here. When `torch.distributed` is
    initialised with more than one process (as under `accelerate launch`), the features of all
    ranks are gathered and every local row is scored against the global batch; each rank returns
    the mean over its own rows, so the mean over ranks is the global-batch loss.

    Args:
        image_features: float[B, D], one row per image (or per video).
        text_features: float[B, D], row i describes image i.
        logit_scale: the *log* of the scale (a 0-d tensor, e.g. `LogitScale()()`, or a float).

    Returns:
        The loss, a 0-d tensor.

    Raises:
        ValueError: if the features are not 2-D, or their shapes differ.

    Example:
        >>> x = torch.eye(4)
        >>> clip_loss(x, x, logit_scale=math.log(100.0)) < 1e-3
        tensor(True)
    """
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"image_features and text_features must both be [B, D] with the same shape, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    image = F.normalize(image_features, dim=-1)  # (B, D)
    text = F.normalize(text_features, dim=-1)  # (B, D)
    all_images, offset = _gather(image)  # (G, D)
    all_texts, _ = _gather(text)  # (G, D)
    b = image.shape[0]
    if b == 0:
        # this rank had no valid samples; it still took part in the gathers above
        return (all_images.sum() + all_texts.sum()) * 0.0
    if isinstance(logit_scale, torch.Tensor):
        scale = logit_scale.to(image.dtype).exp()
    else:
        scale = torch.tensor(float(logit_scale), dtype=image.dtype, device=image.device).exp()
    logits_per_image = scale * image @ all_texts.T  # (B, G)
    logits_per_text = scale * text @ all_images.T  # (B, G)
    labels = torch.arange(offset, offset + b, device=image.device)  # (B,)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def _gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows, in rank order, and the index of this rank's first row.

    Without a multi-process group this is `(x, 0)`.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    counts = [int(c.item()) for c in counts]
    offset = sum(counts[: dist.get_rank()])
    return _GatherRows.apply(x, counts, offset), offset


class _GatherRows(torch.autograd.Function):
    """Differentiable all-gather along dim 0; ranks may hold different numbers of rows.

    Backward sums the gradient of the gathered tensor over ranks and returns this rank's slice,
    so a row gets the gradient of every rank's loss that used it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int], offset: int) -> torch.Tensor:
        padded = x.new_zeros((max(counts), *x.shape[1:]))  # (max B, D): all_gather needs equal shapes
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.rows = (offset, offset + x.shape[0])
        return torch.cat([p[:c] for p, c in zip(parts, counts)])  # (G, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()  # (G, D)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.rows
        return grad[start:stop], None, None  # (B, D)
