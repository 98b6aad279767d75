"""Loader plumbing shared by every datamodule: whole index batches decoded from the
memory-mapped cache, dealt out to DDP processes, and a training loader that resumes mid-epoch."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..batch import CTRBatch
from .storage import StoredSplit

__all__: list[str] = []  # internal to the data layer


class _RangeBatchSampler(DistributedSampler):
    """Yields whole batches as index lists: contiguous ranges, or shuffled ranges of a
    per-epoch permutation (seeded by ``seed + epoch`` so runs repeat).

    The permutation shuffles single rows by default (``block_rows = 0``). With ``block_rows =
    R > 0`` it shuffles blocks of ``R`` consecutive rows, then the rows within each window of
    ``window_blocks`` consecutive blocks of that order: a batch then draws from at most a few
    regions of the memory-mapped cache, which are read from disk once and stay in the page cache
    while the window lasts, instead of one random page per row. This is what keeps the loader
    fed when the cache is larger than memory; the cost is batches that mix fewer distant rows
    (each epoch still sees every row once, in a new order).

    Under ``torch.distributed`` with ``W`` processes, evaluation deals the batches out in turn
    (process ``r`` takes every ``W``-th batch: a split is partitioned, never padded with
    repeats, so synced metrics count every sample once). Training (``shuffle``) also sees every
    sample exactly once per epoch, and every process takes the same number of batches so that
    gradient all-reduces stay in step: process ``r`` takes every ``W``-th sample of the epoch's
    permutation, cut into ``ceil(ceil(n / W) / batch_size)`` batches of near-equal size (at
    most ``batch_size``). DataLoader workers take whole batches in turn, so ``W`` processes x
    any number of workers still read each sample once. It subclasses
    ``DistributedSampler`` only so that Lightning keeps it instead of injecting its own, which
    would hand single indices to a dataset that reads whole batches.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, block_rows: int = 0,  # noqa: D107
                 window_blocks: int = 8) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and a process group.
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, 0
        self.block_rows, self.window_blocks = block_rows, window_blocks

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _num_batches(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __len__(self) -> int:
        world, rank = self._world()
        if self.shuffle and world > 1:
            return self._batches_per_process(world)
        return len(range(rank, self._num_batches(), world))

    def _batches_per_process(self, world: int) -> int:
        return -(-(-(-self.n // world)) // self.batch_size)  # ceil(ceil(n / W) / batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; the next shuffle uses ``seed + epoch``."""
        self.epoch = epoch

    #: Batches to leave out at the start of the next pass (a resumed epoch); reset after use.
    skip: int = 0

    def _permutation(self, rng: np.random.Generator) -> np.ndarray:
        if not self.block_rows:
            return rng.permutation(self.n)
        starts = rng.permutation(-(-self.n // self.block_rows)) * self.block_rows
        lengths = np.minimum(starts + self.block_rows, self.n) - starts
        # The blocks' row ranges laid end to end: start of each row's block + its offset in it.
        ends = np.cumsum(lengths)
        order = np.repeat(starts - (ends - lengths), lengths) + np.arange(self.n)
        window = self.block_rows * self.window_blocks
        for begin in range(0, self.n, window):
            rng.shuffle(order[begin:begin + window])
        return order

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = self._permutation(np.random.default_rng(self.seed + self.epoch))
            self.epoch += 1
        else:
            order = np.arange(self.n)
        world, rank = self._world()
        skip, self.skip = self.skip, 0
        if self.shuffle and world > 1:
            batches = np.array_split(order[rank::world], self._batches_per_process(world))
            # Only with batch_size 1 can a process run out of samples: it repeats one, so that
            # every process still takes a step.
            batches = [batch if len(batch) else order[:1] for batch in batches]
        else:
            batches = [order[start:start + self.batch_size] for start in range(0, self.n, self.batch_size)][rank::world]
        yield from batches[skip:]


class _ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints.

    Lightning saves ``state_dict()`` of such loaders with a checkpoint and calls
    ``load_state_dict()`` before a resumed run iterates, so a run restarted from a mid-epoch
    checkpoint continues with the batch after the last one trained, in the same shuffled order,
    instead of starting the epoch over. The position counts batches handed to the consumer (the
    training loop), not the ones workers prefetched; a test kills a run and checks that the
    resumed one ends with the uninterrupted run's weights.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0
        self._served = 0
        self._resume_at = 0

    def __iter__(self):  # type: ignore[override]
        sampler: _RangeBatchSampler = self.sampler  # type: ignore[assignment]
        self._epoch = sampler.epoch
        self._served, self._resume_at = self._resume_at, 0
        sampler.skip = self._served
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch = int(state["epoch"])  # type: ignore[attr-defined]
        self._resume_at = int(state["served"])


class _BatchDataset:
    """Map-style dataset whose ``__getitem__`` takes a whole index batch and returns a CTRBatch.

    The split stays memory-mapped (:class:`~ifusion_plugin.data.storage.StoredSplit`); a batch
    decodes only its own rows, vectorised, so neither the process nor a loader worker holds the
    split in RAM.
    """

    def __init__(self, split: StoredSplit) -> None:
        self.split = split
        self.n = len(split)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index) -> CTRBatch:
        idx = np.asarray(index, dtype=np.int64)
        out = self.split.rows(idx)
        out["row"] = idx  # the samples' rows in the split: predictions are placed by them
        return CTRBatch.from_columns(out)


def _identity(batch: CTRBatch) -> CTRBatch:
    return batch
