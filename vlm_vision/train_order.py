"""The data order of training: which samples each process reads at each micro-batch.

Why resuming is exact: the order is a pure function of (seed, epoch) (`micro_batch_indices`), so
the position in the run is just the number of micro-batches consumed, and the data loader draws
no numbers from the global RNG (it has its own generator).

Why the loader yields every process's micro-batches: accelerate prepares it (`accelerator.prepare`),
and its shard hands batch number k to process k mod n. The sampler therefore lists, for each
position, the indices of process 0's micro-batch, then process 1's, ... so each process receives
exactly `micro_batch_indices(position, process_index=its own)`. A prepared loader is what
DeepSpeed's "auto" micro-batch size is read from (the loader's `batch_size`).

Why a bad sample never stops a run: a sample that fails to load (`_ReplaceBad`) is replaced by
the next one in the epoch order, so every process still sees a full batch and stays in step with
the others; the skips travel with the batch to be logged.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from vlm_vision.train_data import ConversationDataset, Example, Skipped

__all__ = ["epoch_order", "micro_batch_indices", "micro_batch_loader"]


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation that depends on (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


def micro_batch_indices(position: int, *, num_samples: int, batch_size: int, num_processes: int,
                        process_index: int, seed: int) -> list[int]:
    """Sample indices of micro-batch number `position` (counted over all epochs) for one process.

    Each epoch is cut into global batches of `batch_size * num_processes` (an incomplete last one
    is dropped) and each process takes its slice.

    Raises:
        ValueError: when there are fewer samples than one global batch.

    Example:
        >>> micro_batch_indices(0, num_samples=4, batch_size=2, num_processes=1, process_index=0, seed=0)
        [2, 1]
    """
    global_batch = batch_size * num_processes
    per_epoch = num_samples // global_batch
    if per_epoch == 0:
        raise ValueError(f"{num_samples} usable samples are fewer than one global batch "
                         f"(batch_size {batch_size} x {num_processes} processes)")
    epoch, k = divmod(position, per_epoch)
    order = epoch_order(num_samples, seed, epoch)
    start = k * global_batch + process_index * batch_size
    return order[start: start + batch_size]


class _GlobalOrder(torch.utils.data.Sampler):
    """Sample indices from micro-batch `start` on, every process's micro-batch in turn (endless)."""

    def __init__(self, start: int, num_processes: int, **kwargs: int):
        self.start = start
        self.num_processes = num_processes
        self.kwargs = kwargs

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            for process in range(self.num_processes):
                yield from micro_batch_indices(position, num_processes=self.num_processes, process_index=process,
                                               **self.kwargs)
            position += 1


class _ReplaceBad(torch.utils.data.Dataset):
    """Returns (example, skipped): a sample that fails to load is replaced by the next that loads."""

    def __init__(self, dataset: ConversationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Example, list[Skipped]]:
        skipped = []
        for k in range(len(self.dataset)):
            item = self.dataset[(index + k) % len(self.dataset)]
            if isinstance(item, Example):
                return item, skipped
            skipped.append(item)
        raise RuntimeError(f"none of the {len(self.dataset)} samples could be loaded; first reasons: "
                           f"{[s.reason for s in skipped[:3]]}")


def _collate(items: list[tuple[Example, list[Skipped]]]) -> tuple[list[Example], list[Skipped]]:
    # Padding happens in `model_inputs`, on the main process, where the tower lives.
    return [example for example, _ in items], [s for _, skipped in items for s in skipped]


def micro_batch_loader(dataset: ConversationDataset, *, start: int, batch_size: int, num_processes: int, seed: int,
                       num_workers: int) -> torch.utils.data.DataLoader:
    """Endless (examples, skipped) micro-batches of all processes in turn, from micro-batch `start` on.

    Prepare it with accelerate (`accelerator.prepare(loader)`) so each process gets its own; in one
    process it is the run's order as it is.
    """
    return torch.utils.data.DataLoader(
        _ReplaceBad(dataset),
        sampler=_GlobalOrder(start, num_processes, num_samples=len(dataset), batch_size=batch_size, seed=seed),
        batch_size=batch_size, collate_fn=_collate, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed))  # never draws from the global RNG
