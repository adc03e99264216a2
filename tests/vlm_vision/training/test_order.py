"""Sample order: plain and length-grouped, pure functions of (seed, epoch, position); padding saved."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_vision.training.order import DataOrder, grouped_epoch_order, micro_batch_indices, padding_fraction


def _mixed(n=600, seed=0):
    """Text (20-400 tokens), image (600-700) and video (1200-4800) samples, interleaved at random."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice([0, 1, 2], size=n, p=[0.3, 0.3, 0.4])
    lengths = np.where(kinds == 0, rng.integers(20, 400, n),
                       np.where(kinds == 1, rng.integers(600, 700, n), rng.integers(1200, 4800, n)))
    return lengths.tolist(), kinds.tolist()


def test_padding_fraction_hand_computed():
    assert padding_fraction([4, 2, 3, 3], [[0, 1], [2, 3]]) == pytest.approx(2 / 14)
    assert padding_fraction([5, 5], [[0], [1]]) == 0.0


def test_grouped_order_keeps_batches_within_one_modality_and_sorted():
    lengths, kinds = _mixed(n=203)
    global_batch = 4
    order = grouped_epoch_order(lengths, kinds, global_batch, seed=1, epoch=0)
    assert sorted(order) == list(range(203))
    full = [order[i: i + global_batch] for i in range(0, len(order), global_batch)]
    leftover = sum(len([k for k in kinds if k == code]) % global_batch for code in (0, 1, 2))
    for batch in full[: (203 - leftover) // global_batch]:
        assert len({kinds[i] for i in batch}) == 1, batch
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert order == grouped_epoch_order(lengths, kinds, global_batch, seed=1, epoch=0)  # pure
    assert order != grouped_epoch_order(lengths, kinds, global_batch, seed=1, epoch=1)
    assert order != grouped_epoch_order(lengths, kinds, global_batch, seed=2, epoch=0)


def test_grouping_saves_padding_on_a_mixed_dataset():
    lengths, kinds = _mixed()
    plain = DataOrder(len(lengths), batch_size=8, num_processes=1, seed=0)
    grouped = DataOrder(len(lengths), batch_size=8, num_processes=1, seed=0, lengths=lengths, modalities=kinds)
    steps = len(lengths) // 8
    plain_pad = padding_fraction(lengths, [plain.micro_batch(p, 0) for p in range(steps)])
    grouped_pad = padding_fraction(lengths, [grouped.micro_batch(p, 0) for p in range(steps)])
    assert plain_pad > 0.4 and grouped_pad < 0.1, (plain_pad, grouped_pad)


def test_a_resumed_order_replays_the_same_batches_on_every_process():
    lengths, kinds = _mixed(n=97)
    kwargs = dict(batch_size=3, num_processes=2, seed=7, lengths=lengths, modalities=kinds)
    straight = DataOrder(97, **kwargs)
    run = {p: [straight.micro_batch(k, p) for k in range(40)] for p in (0, 1)}  # 40 > one epoch of 16
    for p in (0, 1):
        resumed = DataOrder(97, **kwargs).batches(23, p)
        assert [next(resumed) for _ in range(17)] == run[p][23:]
    # within a step the two processes take disjoint halves of one global batch
    for k in range(16):
        assert not set(run[0][k]) & set(run[1][k])
    assert sorted(i for k in range(16) for p in (0, 1) for i in run[p][k]) == sorted(
        straight.epoch(0)[:96])


def test_plain_order_and_errors():
    assert micro_batch_indices(0, num_samples=4, batch_size=2, num_processes=1, process_index=0, seed=0) == [0, 1]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DataOrder(3, batch_size=2, num_processes=2, seed=0)
    with pytest.raises(ValueError, match="needs both"):
        DataOrder(4, batch_size=2, num_processes=1, seed=0, lengths=[1, 2, 3, 4])
