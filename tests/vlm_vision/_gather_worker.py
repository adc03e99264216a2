"""The body of each process in test_contrastive's two-process test.

It loads `vlm_vision/model/contrastive.py` by its path rather than through the package: `import vlm_vision`
pulls in transformers and the whole model stack, seconds per spawned process, and the loss needs
only torch. The code under test is the same file.
"""

import importlib.util
import os
import pathlib

import torch
import torch.distributed as dist

_CLIP_LOSS = pathlib.Path(__file__).resolve().parents[2] / "vlm_vision" / "model" / "contrastive.py"


def _load_clip_loss():
    spec = importlib.util.spec_from_file_location("_clip_loss_under_test", _CLIP_LOSS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.clip_loss


def worker(rank: int, world: int, port: int, out: str, sizes: list[list[int]]) -> None:
    """Each case: rank r takes its rows of a seeded global batch, computes the loss, backpropagates."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    clip_loss = _load_clip_loss()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case, per_rank in enumerate(sizes):
            g = torch.Generator().manual_seed(case)
            img = torch.randn(sum(per_rank), 8, generator=g)
            txt = torch.randn(sum(per_rank), 8, generator=g)
            start = sum(per_rank[:rank])
            local_img = img[start : start + per_rank[rank]].clone().requires_grad_()
            local_txt = txt[start : start + per_rank[rank]].clone().requires_grad_()
            loss = clip_loss(local_img, local_txt, torch.tensor(1.5))
            loss.backward()
            torch.save({"loss": loss.detach(), "img_grad": local_img.grad, "txt_grad": local_txt.grad},
                       f"{out}/case{case}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()
