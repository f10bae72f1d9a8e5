"""--group_by_aspect (TrainConfig.group_by_aspect): training batches of one orientation each, against the rule
written out here; the number of batches, the exact resume and the split between processes stay as without."""

from __future__ import annotations

import json

import pytest
import torch

from detr.data.loaders import aspect_groups, build_datasets, resolve_data
from detr.data.sampler import EpochBatchSampler
from detr.training.train import _prepare

from ..helpers.train import config, tiny_data


def reference_pass(groups: list[int], batch_size: int, seed: int, data_pass: int) -> list[list[int]]:
    """The documented rule: walk the pass's shuffled order, a group's batch is full as soon as it has
    batch_size images; what is left at the end, in order, fills the last batches; only full batches are kept."""
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed * 100_003 + data_pass)).tolist()
    batches, waiting = [], {g: [] for g in set(groups)}
    for i in order:
        waiting[groups[i]].append(i)
        if len(waiting[groups[i]]) == batch_size:
            batches.append(waiting[groups[i]])
            waiting[groups[i]] = []
    rest = [i for i in order if not any(i in b for b in batches)]
    batches += [rest[k:k + batch_size] for k in range(0, len(rest), batch_size)]
    return [b for b in batches if len(b) == batch_size]


GROUPS = [0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0]  # 17 images, 7 portrait


def test_batches_follow_the_rule_and_are_as_many_as_without_groups():
    sampler = EpochBatchSampler(len(GROUPS), 3, shuffle=True, drop_last=True, seed=5, groups=GROUPS)
    plain = EpochBatchSampler(len(GROUPS), 3, shuffle=True, drop_last=True, seed=5)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        plain.set_epoch(epoch)
        got = list(sampler)
        assert got == reference_pass(GROUPS, 3, 5, epoch)
        assert len(got) == len(sampler) == len(list(plain)) == len(GROUPS) // 3
        mixed = [b for b in got if len({GROUPS[i] for i in b}) > 1]
        assert len(mixed) <= 1 and (not mixed or mixed[0] == got[-1])  # only from the leftovers, at the end
        assert len({i for b in got for i in b}) == 3 * len(got)  # no image twice in a pass


def test_steps_per_epoch_and_resume_cut_the_grouped_stream():
    steps, bs = 4, 3
    stream = [b for p in range(10) for b in reference_pass(GROUPS, bs, 7, p)]
    sampler = EpochBatchSampler(len(GROUPS), bs, shuffle=True, drop_last=True, seed=7, steps_per_epoch=steps,
                                groups=GROUPS)
    for epoch in range(4):
        sampler.set_epoch(epoch, 1)  # resumed after one step
        assert list(sampler) == stream[epoch * steps + 1:(epoch + 1) * steps]


def test_processes_split_the_pass_and_group_their_own_share():
    shares = []
    for rank in range(2):
        sampler = EpochBatchSampler(len(GROUPS), 2, shuffle=True, drop_last=False, seed=3, rank=rank, world_size=2,
                                    groups=GROUPS)
        shares.append(list(sampler))
        assert all(len({GROUPS[i] for i in b}) == 1 for b in shares[-1][:-1])
    assert len(shares[0]) == len(shares[1])
    seen = [i for s in shares for b in s for i in b]
    assert len(seen) == 18 and set(seen) == set(range(len(GROUPS)))  # one image repeated to even the shares
    # evaluation (no shuffle) keeps the dataset order whatever the groups
    val = EpochBatchSampler(len(GROUPS), 4, shuffle=False, drop_last=False, groups=GROUPS)
    assert [i for b in val for i in b] == list(range(len(GROUPS)))


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="one group id per sample"):
        EpochBatchSampler(5, 2, shuffle=True, drop_last=True, groups=[0, 1])


def test_training_batches_one_orientation(tmp_path):
    """End to end: the flag reaches the training loader, and the groups are the orientations the annotations give."""
    paths = tiny_data(tmp_path / "data", num_train=24, num_val=1)  # random sizes: both orientations
    with open(paths["train_annotations"]) as f:
        portrait = {im["id"]: im["height"] > im["width"] for im in json.load(f)["images"]}
    cfg = resolve_data(config(paths, "", ["--group_by_aspect", "--batch_size", "4", "--num_workers", "0"]))
    dataset = build_datasets(cfg).train
    assert aspect_groups(dataset) == [int(portrait[i]) for i in dataset.ids]
    assert 0 < sum(portrait.values()) < len(portrait)
    batches = [[t["image_id"] for t in targets] for _, targets in _prepare(cfg, torch.device("cpu"))[0].train_loader]
    assert len(batches) == 6
    assert all(len({portrait[i] for i in b}) == 1 for b in batches[:-1])
