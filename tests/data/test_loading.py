"""The training order of the loaders: single-row shuffle and block shuffle (``shuffle_block_rows``)."""

from __future__ import annotations

import numpy as np
import pytest

from ifusion_plugin.data import SyntheticDataModule
from ifusion_plugin.data.loading import _RangeBatchSampler


def _epoch(sampler: _RangeBatchSampler) -> list[list[int]]:
    return [list(map(int, batch)) for batch in sampler]


@pytest.mark.parametrize("n", [1000, 1003])  # a whole number of blocks, and a short last block
def test_block_shuffle_sees_every_row_once_and_reads_in_runs(n: int) -> None:
    sampler = _RangeBatchSampler(n, batch_size=16, shuffle=True, seed=0, block_rows=25, window_blocks=4)
    batches = _epoch(sampler)
    rows = [r for batch in batches for r in batch]
    assert sorted(rows) == list(range(n))  # every row once
    # A window of 4 blocks x 25 positions holds the rows of 4 blocks; 5 once the short last
    # block (wherever it lands) has shifted the blocks against the windows.
    for begin in range(0, n, 100):
        window = rows[begin:begin + 100]
        assert len({r // 25 for r in window}) <= (4 if n % 25 == 0 else 5)
    # ... while the blocks themselves come in a shuffled order, and rows inside a window too.
    first_blocks = [rows[i] // 25 for i in range(0, n, 25)]
    assert first_blocks != sorted(first_blocks)
    assert rows[:100] != sorted(rows[:100])


def test_block_shuffle_is_seeded_per_epoch() -> None:
    a = _RangeBatchSampler(500, batch_size=32, shuffle=True, seed=3, block_rows=10)
    b = _RangeBatchSampler(500, batch_size=32, shuffle=True, seed=3, block_rows=10)
    first = _epoch(a)
    assert first == _epoch(b)  # same seed, same epoch: same order (what resuming relies on)
    assert _epoch(a) != first  # the next epoch reshuffles
    assert _epoch(_RangeBatchSampler(500, batch_size=32, shuffle=True, seed=4, block_rows=10)) != first


def test_block_shuffle_partitions_by_rank(monkeypatch) -> None:
    seen = []
    for rank in range(3):
        monkeypatch.setattr(_RangeBatchSampler, "_world", staticmethod(lambda rank=rank: (3, rank)))
        sampler = _RangeBatchSampler(n=257, batch_size=8, shuffle=True, seed=1, block_rows=16, window_blocks=2)
        batches = _epoch(sampler)
        assert len(batches) == len(sampler)
        seen.append([r for batch in batches for r in batch])
    assert sorted(r for part in seen for r in part) == list(range(257))  # none on two ranks, none dropped


def test_evaluation_order_ignores_block_shuffle() -> None:
    sampler = _RangeBatchSampler(50, batch_size=8, shuffle=False, seed=0, block_rows=10)
    assert [r for batch in _epoch(sampler) for r in batch] == list(range(50))


def test_datamodule_passes_and_checks_the_block_options(tmp_path) -> None:
    kw = dict(num_users=40, num_items=60, num_cates=6, history_len=20, long_len=8, batch_size=16, cache_dir=str(tmp_path))
    data = SyntheticDataModule(shuffle_block_rows=32, shuffle_window_blocks=2, **kw)
    sampler = data.train_dataloader().sampler
    assert (sampler.block_rows, sampler.window_blocks) == (32, 2)
    rows = np.concatenate([batch.row.numpy() for batch in data.train_dataloader()])
    assert sorted(rows.tolist()) == list(range(len(data.split("train"))))
    with pytest.raises(ValueError, match=r"shuffle_block_rows must be an int >= 0, got -1"):
        SyntheticDataModule(shuffle_block_rows=-1, **kw)
    with pytest.raises(ValueError, match=r"shuffle_window_blocks must be an int >= 1, got 0"):
        SyntheticDataModule(shuffle_window_blocks=0, **kw)
