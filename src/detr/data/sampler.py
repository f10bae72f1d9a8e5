"""Batches whose order depends only on (seed, epoch): what makes resuming a run exact."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices for one process of `world_size`, like
    DistributedSampler + BatchSampler, but with the order a pure function of (seed, epoch)
    and the option to start at a given step (to resume in the middle of an epoch).

    Like DistributedSampler, a few indices are repeated so that every process gets the same
    number of batches (evaluation removes the repeats by image id).

    With `steps_per_epoch` N, an "epoch" is N batches instead of one pass: the batches of
    consecutive passes (pass p shuffled as epoch p would be without N) form one stream, and
    epoch e is its batches e*N .. e*N + N - 1; the order is still a pure function of (seed, epoch).

    Args:
        dataset_len: number of samples.
        batch_size: samples per batch on this process.
        shuffle: a new permutation every epoch (training) or the dataset order (evaluation).
        drop_last: drop the last incomplete batch (training).
        seed: with the epoch, decides the permutation.
        rank, world_size: this process and the number of processes.
        steps_per_epoch: batches per epoch (None: one pass over the data).
    """

    def __init__(self, dataset_len: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, steps_per_epoch: int | None = None,
                 groups: Sequence[int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 (or None: one pass), got {steps_per_epoch}")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.steps_per_epoch = steps_per_epoch
        if groups is not None and len(groups) != dataset_len:
            raise ValueError(f"groups: expected one group id per sample ({dataset_len}), got {len(groups)}")
        self.groups = groups
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Use `epoch`'s order and skip its first `start_step` batches."""
        self.epoch = epoch
        self.start_step = start_step

    def _indices(self, data_pass: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + data_pass)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        per_process = -(-self.dataset_len // self.world_size)  # ceil
        order += order[: per_process * self.world_size - len(order)]
        return order[self.rank :: self.world_size]

    def _pass_batches(self, data_pass: int) -> list[list[int]]:
        idx = self._indices(data_pass)
        if self.groups is not None and self.shuffle:
            idx = self._grouped(idx)
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _grouped(self, idx: list[int]) -> list[int]:
        """`idx` reordered so that each run of `batch_size` is one group's (but the leftovers at the end)."""
        assert self.groups is not None
        ordered: list[int] = []
        pending: dict[int, list[int]] = {}
        for i in idx:
            bucket = pending.setdefault(self.groups[i], [])
            bucket.append(i)
            if len(bucket) == self.batch_size:
                ordered += bucket
                bucket.clear()
        return ordered + [i for bucket in pending.values() for i in bucket]

    def _all_batches(self) -> list[list[int]]:
        if self.steps_per_epoch is None:
            return self._pass_batches(self.epoch)
        per_pass = len(self._pass_batches(0))  # the same for every pass
        if per_pass == 0:
            return []
        batches: list[list[int]] = []
        position = self.epoch * self.steps_per_epoch  # in the stream of all passes' batches
        while len(batches) < self.steps_per_epoch:
            data_pass, first = divmod(position, per_pass)
            taken = self._pass_batches(data_pass)[first : first + self.steps_per_epoch - len(batches)]
            batches += taken
            position += len(taken)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._all_batches()[self.start_step :]

    def __len__(self) -> int:
        return max(len(self._all_batches()) - self.start_step, 0)
