"""Loader plumbing shared by every datamodule: whole index batches read from the memory-mapped
Arrow cache, dealt out to DDP processes, and a training loader that resumes mid-epoch."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..batch import CTRBatch

__all__: list[str] = []  # internal to the data layer


class _RangeBatchSampler(DistributedSampler):
    """Yields whole batches as index lists: contiguous ranges, or shuffled ranges of a
    per-epoch permutation (seeded by ``seed + epoch`` so runs repeat).

    Under ``torch.distributed`` each of the ``W`` processes takes every ``W``-th batch: a split
    is partitioned, never padded with repeats, so synced metrics count every sample once. For
    training (``shuffle``) every process gets the same number of batches (the last
    ``num_batches % W`` are dropped) so that gradient all-reduces stay in step. It subclasses
    ``DistributedSampler`` only so that Lightning keeps it instead of injecting its own, which
    would hand single indices to a dataset that reads whole batches.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int) -> None:  # noqa: D107
        # DistributedSampler.__init__ is not called: it needs a dataset and a process group.
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, 0

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _num_batches(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __len__(self) -> int:
        world, rank = self._world()
        total = self._num_batches()
        if self.shuffle:
            return total // world if world > 1 else total
        return len(range(rank, total, world))

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; the next shuffle uses ``seed + epoch``."""
        self.epoch = epoch

    #: Batches to leave out at the start of the next pass (a resumed epoch); reset after use.
    skip: int = 0

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
            self.epoch += 1
        else:
            order = np.arange(self.n)
        world, rank = self._world()
        starts = list(range(0, self.n, self.batch_size))
        if self.shuffle and world > 1:
            starts = starts[: len(starts) // world * world]
        skip, self.skip = self.skip, 0
        for start in starts[rank::world][skip:]:
            yield order[start:start + self.batch_size]


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

    Each column's Arrow chunks are viewed zero-copy as numpy arrays of shape ``(rows, *shape)``
    over the memory-mapped cache (fixed-size lists are one flat int64 buffer), so a batch is a
    numpy fancy-index per chunk: no per-row Python objects and no copy of the split in RAM.
    """

    def __init__(self, ds) -> None:
        self.n = len(ds)
        table = ds.data.table
        self.columns: dict[str, list[np.ndarray]] = {}
        self.offsets = None
        for name in table.column_names:
            views, starts, start = [], [], 0
            for chunk in table.column(name).chunks:
                shape = [len(chunk)]
                arr = chunk
                while pa.types.is_fixed_size_list(arr.type):
                    shape.append(arr.type.list_size)
                    arr = arr.flatten()
                views.append(arr.to_numpy(zero_copy_only=False).reshape(shape))
                starts.append(start)
                start += len(chunk)
            self.columns[name] = views
            self.offsets = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index) -> CTRBatch:
        idx = np.asarray(index, dtype=np.int64)
        chunk_of = np.searchsorted(self.offsets, idx, side="right") - 1
        out = {}
        for name, views in self.columns.items():
            if len(views) == 1:
                out[name] = views[0][idx]
                continue
            first = views[0]
            col = np.empty((len(idx),) + first.shape[1:], dtype=first.dtype)
            for c in np.unique(chunk_of):
                sel = chunk_of == c
                col[sel] = views[c][idx[sel] - self.offsets[c]]
            out[name] = col
        out["row"] = idx  # the samples' rows in the split: predictions are placed by them
        return CTRBatch.from_columns(out)


def _identity(batch: CTRBatch) -> CTRBatch:
    return batch
