"""The data order of training: which samples each process reads at each micro-batch.

Why resuming is exact: the order is a pure function of (seed, epoch) (`DataOrder`), so
the position in the run is just the number of micro-batches consumed, and the data loader draws
no numbers from the global RNG (it has its own generator).

Why the loader yields every process's micro-batches: accelerate prepares it (`accelerator.prepare`),
and its shard hands batch number k to process k mod n. The sampler therefore lists, for each
position, the indices of process 0's micro-batch, then process 1's, ... so each process receives
exactly `micro_batch_indices(position, process_index=its own)`. A prepared loader is what
DeepSpeed's "auto" micro-batch size is read from (the loader's `batch_size`).

Plain order: each epoch is a seeded permutation, cut into global batches of `batch_size *
num_processes` (an incomplete last one is dropped) and each process takes its slice.

Length-grouped order (`group_by_modality_length`): LLaVA's option of the same name keeps every
batch within one modality (text-only, image or video samples), so a batch of short text
conversations is not padded to the length of a 32-frame video. LLaVA's own version then sorts
lengths only inside each global batch, which balances processes but leaves each batch a random
draw of lengths; here, as in transformers' `group_by_length`, each modality's shuffled samples are
cut into mega-batches of `MEGABATCH` global batches, sorted by length inside a mega-batch and cut
into global batches, so a batch holds samples of similar length. The global batches of all
modalities are then shuffled together; each modality's leftover (fewer than a global batch) goes
into mixed batches at the end of the epoch. Lengths are real token counts from the scan (LLaVA
counts words). Everything random comes from a generator seeded by (seed, epoch).

Why a bad sample never stops a run: a sample that fails to load (`_ReplaceBad`) is replaced by
the next one in the epoch order, so every process still sees a full batch and stays in step with
the others; the skips travel with the batch to be logged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from vlm_vision.data.examples import ConversationDataset, Example
from vlm_vision.data.files import Skipped

__all__ = ["DataOrder", "epoch_order", "grouped_epoch_order", "micro_batch_indices", "micro_batch_loader",
           "padding_fraction"]

MEGABATCH = 50
"""Global batches per mega-batch inside which samples are sorted by length (transformers' default)."""


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation that depends on (seed, epoch) only."""
    return torch.randperm(num_samples, generator=_generator(seed, epoch)).tolist()


def grouped_epoch_order(lengths: Sequence[int], modalities: Sequence[int], global_batch: int, seed: int,
                        epoch: int, megabatch: int = MEGABATCH) -> list[int]:
    """One epoch's order in global batches of one modality and similar length (see the module docstring).

    Args:
        lengths: tokens of each sample.
        modalities: a code per sample (e.g. 0 text, 1 image, 2 video); a batch never mixes codes,
            except the leftover batches at the end of the epoch.
        global_batch: samples per optimizer micro-step over all processes.

    Returns:
        A permutation of `range(len(lengths))`; every full global batch, in order, is a slice
        `[k * global_batch, (k + 1) * global_batch)`, longest sample first.

    Example:
        >>> grouped_epoch_order([5, 1, 9, 2], [0, 0, 0, 0], global_batch=2, seed=0, epoch=0, megabatch=2)
        [2, 0, 3, 1]
    """
    lengths_np = np.asarray(lengths, dtype=np.int64)
    codes = np.asarray(modalities)
    if lengths_np.shape != codes.shape:
        raise ValueError(f"{len(lengths_np)} lengths for {len(codes)} modality codes")
    generator = _generator(seed, epoch)
    batches, leftover = [], []
    chunk = megabatch * global_batch
    for code in sorted(set(codes.tolist())):
        members = np.flatnonzero(codes == code)
        shuffled = members[torch.randperm(len(members), generator=generator).numpy()]
        ordered = []
        for start in range(0, len(shuffled), chunk):
            mega = shuffled[start: start + chunk]
            ordered.extend(mega[np.argsort(-lengths_np[mega], kind="stable")].tolist())
        full = len(ordered) - len(ordered) % global_batch
        batches += [ordered[i: i + global_batch] for i in range(0, full, global_batch)]
        leftover += ordered[full:]
    order = [i for k in torch.randperm(len(batches), generator=generator).tolist() for i in batches[k]]
    return order + sorted(leftover, key=lambda i: -lengths_np[i])


def micro_batch_indices(position: int, *, num_samples: int, batch_size: int, num_processes: int,
                        process_index: int, seed: int) -> list[int]:
    """Sample indices of micro-batch number `position` (counted over all epochs) for one process, plain order.

    Raises:
        ValueError: when there are fewer samples than one global batch.

    Example:
        >>> micro_batch_indices(0, num_samples=4, batch_size=2, num_processes=1, process_index=0, seed=0)
        [0, 1]
    """
    order = DataOrder(num_samples, batch_size=batch_size, num_processes=num_processes, seed=seed)
    return order.micro_batch(position, process_index)


class DataOrder:
    """Micro-batches for every process, from position 0 on; each epoch's order is computed once.

    Args:
        num_samples: samples in the dataset.
        lengths, modalities: per-sample tokens and modality codes; given, the order is length-grouped.
    """

    def __init__(self, num_samples: int, *, batch_size: int, num_processes: int, seed: int,
                 lengths: Sequence[int] | None = None, modalities: Sequence[int] | None = None):
        self.global_batch = batch_size * num_processes
        self.per_epoch = num_samples // self.global_batch
        if self.per_epoch == 0:
            raise ValueError(f"{num_samples} usable samples are fewer than one global batch "
                             f"(batch_size {batch_size} x {num_processes} processes)")
        if (lengths is None) != (modalities is None):
            raise ValueError("length grouping needs both lengths and modalities")
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"{len(lengths)} lengths for {num_samples} samples")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.lengths, self.modalities = lengths, modalities
        self._epoch: tuple[int, np.ndarray] | None = None

    def epoch(self, epoch: int) -> np.ndarray:
        """The whole order of one epoch, int64[num_samples] (a numpy array: 8 bytes per sample, not a list)."""
        if self._epoch is None or self._epoch[0] != epoch:
            if self.lengths is None:
                order = torch.randperm(self.num_samples, generator=_generator(self.seed, epoch)).numpy()
            else:
                order = np.asarray(grouped_epoch_order(self.lengths, self.modalities, self.global_batch, self.seed,
                                                       epoch), dtype=np.int64)
            self._epoch = (epoch, order)
        return self._epoch[1]

    def micro_batch(self, position: int, process_index: int) -> list[int]:
        """Indices of micro-batch `position` (counted over all epochs) for one process."""
        epoch, k = divmod(position, self.per_epoch)
        start = k * self.global_batch + process_index * self.batch_size
        return self.epoch(epoch)[start: start + self.batch_size].tolist()

    def batches(self, start: int, process_index: int) -> Iterator[list[int]]:
        """Micro-batches from position `start` on, endlessly."""
        position = start
        while True:
            yield self.micro_batch(position, process_index)
            position += 1


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of a padded batch's positions that are padding, over all `batches` (lists of indices).

    Example:
        >>> padding_fraction([4, 2, 3, 3], [[0, 1], [2, 3]])  # (4 * 2 + 3 * 2) positions, 2 of them padding
        0.14285714285714285
    """
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return (padded - real) / padded if padded else 0.0


class _GlobalOrder(torch.utils.data.Sampler):
    """Sample indices from micro-batch `start` on, every process's micro-batch in turn (endless)."""

    def __init__(self, order: DataOrder, start: int, num_processes: int):
        self.order, self.start, self.num_processes = order, start, num_processes

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            for process in range(self.num_processes):
                yield from self.order.micro_batch(position, process)
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
                       num_workers: int, lengths: Sequence[int] | None = None,
                       modalities: Sequence[int] | None = None) -> torch.utils.data.DataLoader:
    """Endless (examples, skipped) micro-batches of all processes in turn, from micro-batch `start` on.

    Prepare it with accelerate (`accelerator.prepare(loader)`) so each process gets its own; in one
    process it is the run's order as it is. With `lengths` and `modalities` (one per sample) the
    order is length-grouped (`DataOrder`).
    """
    order = DataOrder(len(dataset), batch_size=batch_size, num_processes=num_processes, seed=seed,
                      lengths=lengths, modalities=modalities)
    return torch.utils.data.DataLoader(
        _ReplaceBad(dataset), sampler=_GlobalOrder(order, start, num_processes),
        batch_size=batch_size, collate_fn=_collate, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed))  # never draws from the global RNG
