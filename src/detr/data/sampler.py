"""Batches whose order depends only on (seed, epoch): what makes resuming a run exact."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices for one process of `world_size`, like
    DistributedSampler + BatchSampler, but with the order a pure function of (seed, epoch)
    and the option to start at a given step (to resume in the middle of an epoch).

    Like DistributedSampler, a few indices are repeated so that every process gets the same
    number of batches (evaluation removes the repeats by image id).

    Args:
        dataset_len: number of samples.
        batch_size: samples per batch on this process.
        shuffle: a new permutation every epoch (training) or the dataset order (evaluation).
        drop_last: drop the last incomplete batch (training).
        seed: with the epoch, decides the permutation.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, dataset_len: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Use `epoch`'s order and skip its first `start_step` batches."""
        self.epoch = epoch
        self.start_step = start_step

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        per_process = -(-self.dataset_len // self.world_size)  # ceil
        order += order[: per_process * self.world_size - len(order)]
        return order[self.rank :: self.world_size]

    def _all_batches(self) -> list[list[int]]:
        idx = self._indices()
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._all_batches()[self.start_step :]

    def __len__(self) -> int:
        return max(len(self._all_batches()) - self.start_step, 0)
