"""clip_loss and LogitScale: a direct recomputation, the known values, the clamp, and 2 real processes."""

import math
import pathlib
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.vlm_vision._gather_worker import worker
from vlm_vision.model.contrastive import INIT_LOGIT_SCALE, MAX_LOGIT_SCALE, LogitScale, clip_loss


def _reference(img: torch.Tensor, txt: torch.Tensor, log_scale: float) -> torch.Tensor:
    """The loss written out row by row, no matrix tricks."""
    img = img / img.norm(dim=1, keepdim=True)
    txt = txt / txt.norm(dim=1, keepdim=True)
    b = img.shape[0]
    s = math.exp(log_scale)
    total = 0.0
    for i in range(b):
        row = torch.stack([s * img[i] @ txt[j] for j in range(b)])
        col = torch.stack([s * txt[i] @ img[j] for j in range(b)])
        total = total - torch.log_softmax(row, 0)[i] - torch.log_softmax(col, 0)[i]
    return total / (2 * b)


def test_matches_direct_recomputation():
    img, txt = torch.randn(6, 16), torch.randn(6, 16)
    torch.testing.assert_close(clip_loss(img, txt, torch.tensor(2.0)), _reference(img, txt, 2.0))
    torch.testing.assert_close(clip_loss(img, txt, 0.5), _reference(img, txt, 0.5))


def test_is_symmetric_in_its_two_directions():
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(clip_loss(img, txt, 1.0), clip_loss(txt, img, 1.0))
    # but not a function of the similarity multiset alone: unpairing the rows changes it
    assert not torch.allclose(clip_loss(img, txt, 1.0), clip_loss(img, txt.roll(1, 0), 1.0))


def test_aligned_features_at_high_scale_give_almost_zero():
    x = torch.randn(8, 32)
    x = torch.linalg.qr(x.T).Q.T  # (8, 32) orthonormal rows: each pair is far from every other
    assert clip_loss(x, 3.0 * x, MAX_LOGIT_SCALE).item() < 1e-3  # the scale of the features does not matter


def test_unrelated_features_give_about_log_batch():
    b = 64
    losses = [clip_loss(torch.randn(b, 512), torch.randn(b, 512), 0.0).item() for _ in range(5)]
    assert abs(sum(losses) / 5 - math.log(b)) < 0.05


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(4, 8\) and \(4, 9\)"):
        clip_loss(torch.randn(4, 8), torch.randn(4, 9), 1.0)
    with pytest.raises(ValueError, match=r"\(8,\)"):
        clip_loss(torch.randn(8), torch.randn(8), 1.0)


def test_logit_scale_starts_at_temperature_0_07_and_is_clamped_at_100():
    scale = LogitScale()
    assert scale().item() == pytest.approx(INIT_LOGIT_SCALE)
    assert scale().exp().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().exp().item() == pytest.approx(100.0, rel=1e-5)
    # clamped: no gradient pushes it further while it is past the limit
    clip_loss(torch.randn(4, 8), torch.randn(4, 8), scale()).backward()
    assert scale.log_scale.grad.item() == 0.0
    with pytest.raises(ValueError, match="nan"):
        LogitScale(float("nan"))


def test_logit_scale_learns():
    scale = LogitScale()
    img = torch.randn(8, 16)
    clip_loss(img, img + 0.01 * torch.randn(8, 16), scale()).backward()
    assert scale.log_scale.grad.item() < 0  # well-matched pairs: a sharper softmax lowers the loss


# --- two real processes (gloo on the CPU) ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _per_rank_losses(img, txt, sizes, log_scale):
    """Each rank's loss computed in one process: its rows against the global columns."""
    img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    s = math.exp(log_scale)
    losses, start = [], 0
    for n in sizes:
        rows = torch.arange(start, start + n)
        losses.append((F.cross_entropy(s * img[rows] @ txt.T, rows) + F.cross_entropy(s * txt[rows] @ img.T, rows)) / 2)
        start += n
    return losses


def test_two_processes_gather_the_global_batch(tmp_path: pathlib.Path):
    sizes = [[4, 4], [3, 5]]  # equal local batches, then unequal ones (a sample skipped on rank 0)
    mp.spawn(worker, args=(2, _free_port(), str(tmp_path), sizes), nprocs=2, join=True)
    for case, per_rank in enumerate(sizes):
        g = torch.Generator().manual_seed(case)
        img = torch.randn(sum(per_rank), 8, generator=g).requires_grad_()
        txt = torch.randn(sum(per_rank), 8, generator=g).requires_grad_()
        got = [torch.load(tmp_path / f"case{case}_rank{r}.pt") for r in range(2)]

        # each rank's loss: its rows scored against the whole global batch
        expected = _per_rank_losses(img, txt, per_rank, 1.5)
        for r in range(2):
            torch.testing.assert_close(got[r]["loss"], expected[r].detach())
        # a rank's features get the gradient of *every* rank's loss (they are negatives there too)
        torch.stack(expected).sum().backward()
        torch.testing.assert_close(torch.cat([got[0]["img_grad"], got[1]["img_grad"]]), img.grad)
        torch.testing.assert_close(torch.cat([got[0]["txt_grad"], got[1]["txt_grad"]]), txt.grad)

        if per_rank[0] == per_rank[1]:
            # equal batches: the mean over ranks is the single-process loss on the concatenated batch,
            # and each rank's gradient is world_size x that loss's gradient (DDP then divides by 2)
            single_img = img.detach().clone().requires_grad_()
            single_txt = txt.detach().clone().requires_grad_()
            single = clip_loss(single_img, single_txt, torch.tensor(1.5))
            single.backward()
            torch.testing.assert_close((got[0]["loss"] + got[1]["loss"]) / 2, single.detach())
            torch.testing.assert_close(torch.cat([got[0]["img_grad"], got[1]["img_grad"]]) / 2, single_img.grad)
            assert got[0]["img_grad"].abs().sum() > 0 and got[1]["txt_grad"].abs().sum() > 0
