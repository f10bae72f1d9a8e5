"""DDP on CPU (gloo): 2 processes on half batches give the gradients of 1 process on the whole batch."""

from __future__ import annotations

import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detr import create_criterion, create_model
from detr.data.sampler import EpochBatchSampler
from detr.evaluation.evaluate import evaluate
from detr.training.engine import train_one_epoch

from ..helpers.train import TINY_MODEL

NUM_CLASSES = 5


def make_batch() -> tuple[list[torch.Tensor], list[dict]]:
    """Four same-size images (so padding is the same in any split) with 1-3 boxes each."""
    g = torch.Generator().manual_seed(7)
    images = [torch.randn(3, 64, 80, generator=g) for _ in range(4)]
    targets = []
    for i in range(4):
        n = 1 + i % 3
        centre = 0.3 + 0.4 * torch.rand(n, 2, generator=g)
        size = 0.1 + 0.2 * torch.rand(n, 2, generator=g)
        targets.append({"boxes": torch.cat([centre, size], 1), "labels": torch.randint(1, NUM_CLASSES, (n,), generator=g),
                        "image_id": i, "orig_size": torch.tensor([64, 80])})
    return images, targets


def one_step(model: nn.Module, images, targets) -> None:
    # eos_coef=1: the class loss is a plain mean, so the mean over processes of per-process means is
    # the mean over the whole batch (with the paper's 0.1 each process normalises by its own weights,
    # in the official code too).
    criterion = create_criterion(NUM_CLASSES, dec_layers=2, eos_coef=1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0)  # keep the weights; the gradients stay in .grad
    train_one_epoch(model, criterion, [(images, targets)], optimizer, torch.device("cpu"), 0, clip_max_norm=0.0,
                    progress=False)


def new_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("detr_r50", num_classes=NUM_CLASSES, **{**TINY_MODEL, "dec_layers": 2})


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images, targets = make_batch()
        model = new_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        mine = list(range(rank, 4, world))  # what EpochBatchSampler(shuffle=False) gives this rank
        one_step(ddp, [images[i] for i in mine], [targets[i] for i in mine])
        if rank == 0:
            torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_gradients_of_one_process_on_the_whole_batch(tmp_path):
    out_file = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True)
    ddp_grads = torch.load(out_file, weights_only=True)

    model = new_model()
    one_step(model, *make_batch())
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ddp_grads.keys() == single.keys() and len(single) > 10
    for name, grad in single.items():
        torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sampler_splits_each_epoch_between_processes_and_depends_only_on_seed_and_epoch():
    shards = [EpochBatchSampler(10, 2, shuffle=True, drop_last=False, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(4)
    seen = [i for s in shards for batch in s for i in batch]
    assert sorted(seen) == list(range(10))
    again = EpochBatchSampler(10, 2, shuffle=True, drop_last=False, seed=3, rank=0, world_size=2)
    again.set_epoch(4, start_step=1)
    assert list(again) == list(shards[0])[1:]
    shards[0].set_epoch(5)
    assert list(shards[0]) != list(again)


def _eval_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    from detr.evaluation import evaluate as engine

    _no_coco_eval(engine)  # only the detections are compared
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _, detections = _evaluate_shard(rank, world)
        if rank == 0:
            torch.save(detections, out_file)
    finally:
        dist.destroy_process_group()


class _Gt:
    """Stands in for a pycocotools COCO (only the detections are compared here)."""


def _no_coco_eval(engine, setattr=setattr) -> None:
    """No COCOeval and no diagnostics in `engine` (evaluation.evaluate): the stand-in ground truth has none."""
    setattr(engine, "bbox_cocoeval", lambda gt, dets, ids: (types.SimpleNamespace(stats=[0.0] * 12), ""))
    setattr(engine, "write_diagnostics", lambda *args, **kwargs: [])


def _evaluate_shard(rank: int, world: int):
    images, targets = make_batch()
    images, targets = images[:3], targets[:3]  # 3 images on 2 processes: one is repeated for padding
    sampler = EpochBatchSampler(3, 1, shuffle=False, drop_last=False, rank=rank, world_size=world)
    batches = [([images[i] for i in b], [targets[i] for i in b]) for b in sampler]
    model = new_model().eval()
    return evaluate(model, create_criterion(NUM_CLASSES, dec_layers=2), batches, _Gt(), torch.device("cpu"),
                    progress=False)


@pytest.mark.slow
def test_evaluation_gathers_every_image_once_from_all_processes(tmp_path, monkeypatch):
    out_file = str(tmp_path / "dets.pt")
    mp.spawn(_eval_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True)
    gathered = torch.load(out_file, weights_only=True)
    from detr.evaluation import evaluate as engine

    _no_coco_eval(engine, monkeypatch.setattr)
    _, single = _evaluate_shard(0, 1)
    key = lambda d: (d["image_id"], d["bbox"][0], d["bbox"][1])  # noqa: E731
    assert len(gathered) == len(single) == 3 * TINY_MODEL["num_queries"]
    for a, b in zip(sorted(gathered, key=key), sorted(single, key=key)):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-4) and a["score"] == pytest.approx(b["score"], abs=1e-5)
