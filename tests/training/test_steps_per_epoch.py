"""`steps_per_epoch` (TrainConfig, --steps_per_epoch): an epoch of N steps taken in order from consecutive
shuffled passes; without it an epoch is one pass, as before. Resuming stays exact."""

from __future__ import annotations

import json

import pytest
import torch

from detr.checkpoint import load_checkpoint
from detr.data.sampler import EpochBatchSampler
from detr.training.train import train

from ..helpers.train import config, max_weight_diff, tiny_data


def reference_pass(n: int, batch_size: int, seed: int, data_pass: int) -> list[list[int]]:
    """One pass as documented: torch.randperm seeded with seed * 100003 + pass, full batches only."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + data_pass)).tolist()
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def epoch_batches(sampler: EpochBatchSampler, epoch: int, start_step: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, start_step)
    assert len(sampler) == len(list(sampler))
    return list(sampler)


def test_without_it_an_epoch_is_one_pass():
    sampler = EpochBatchSampler(10, 3, shuffle=True, drop_last=True, seed=5)
    for epoch in range(3):
        assert epoch_batches(sampler, epoch) == reference_pass(10, 3, 5, epoch)


@pytest.mark.parametrize("steps", [1, 2, 5, 7])
def test_epochs_cut_the_stream_of_consecutive_passes(steps):
    n, bs, seed = 10, 3, 5  # 3 full batches per pass
    stream = [b for p in range(20) for b in reference_pass(n, bs, seed, p)]
    sampler = EpochBatchSampler(n, bs, shuffle=True, drop_last=True, seed=seed, steps_per_epoch=steps)
    for epoch in range(5):
        assert epoch_batches(sampler, epoch) == stream[epoch * steps:(epoch + 1) * steps]
        # resuming mid-epoch: the rest of the same epoch
        assert epoch_batches(sampler, epoch, steps // 2) == stream[epoch * steps + steps // 2:(epoch + 1) * steps]


def test_every_image_once_per_pass_in_the_first_passes():
    sampler = EpochBatchSampler(12, 4, shuffle=True, drop_last=True, seed=0, steps_per_epoch=2)
    seen = [i for epoch in range(6) for batch in epoch_batches(sampler, epoch) for i in batch]  # 12 steps = 4 passes
    assert sorted(seen) == sorted(list(range(12)) * 4)


def test_bad_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        EpochBatchSampler(10, 2, shuffle=True, drop_last=True, steps_per_epoch=0)
    data = tiny_data(tmp_path / "data", num_train=2, num_val=1)
    with pytest.raises(ValueError, match="--steps_per_epoch must be >= 1"):
        train(config(data, tmp_path / "out", ["--steps_per_epoch", "0"]), progress=False)


def adam_steps(path) -> int:
    """Optimizer steps taken, from AdamW's per-parameter step counts."""
    state = load_checkpoint(path)["optimizer"]["state"]
    counts = {int(s["step"]) for s in state.values()}
    assert len(counts) == 1
    return counts.pop()


def test_training_takes_n_steps_per_epoch_and_resumes_exactly(tmp_path):
    data = tiny_data(tmp_path / "data")  # 6 images, batch 2: 3 steps per pass
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    argv = ["--steps_per_epoch", "2"]
    train(config(data, straight, [*argv, "--epochs", "3"]), progress=False)  # 6 steps: two passes, cut in thirds
    assert adam_steps(straight / "checkpoint.pth") == 6
    log = [json.loads(line) for line in (straight / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1, 2] and all("test_AP" in entry for entry in log)
    train(config(data, resumed, [*argv, "--epochs", "2"]), progress=False)
    assert adam_steps(resumed / "checkpoint.pth") == 4
    train(config(data, resumed, [*argv, "--epochs", "3", "--resume", str(resumed / "checkpoint.pth")]),
          progress=False)
    assert max_weight_diff(load_checkpoint(resumed / "checkpoint.pth")["model"],
                           load_checkpoint(straight / "checkpoint.pth")["model"]) <= 1e-6
