"""The pieces of a training run that are not the loop: datasets and loaders, and the
training checkpoint (what it holds, how it is written and how a run is restored from it)."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .checkpoint import CheckpointError, atomic_write, load_checkpoint, load_model_weights
from .coco_eval import save_detections
from .config import Config, TrainConfig
from .prepare import warn_if_too_few_queries
from .sampler import EpochBatchSampler

# Test hook: seconds to sleep inside a checkpoint write (after the data, before the rename),
# so that fault-injection tests can kill a run in the middle of writing.
SLEEP_IN_WRITE_ENV = "DETR_TEST_SLEEP_IN_CHECKPOINT_WRITE"


@dataclass
class RunData:
    train: Dataset | None
    val: Dataset | None
    coco_gt: Any  # pycocotools COCO of the validation set


def _transforms(cfg: Config, train: bool) -> Any:
    from .data import make_transforms

    d = cfg.data
    if d.scales is None:
        return make_transforms(train, max_size=d.max_size, val_scale=d.val_scale)
    top = max(d.scales)
    # The paper's crop branch scaled to these image sizes (official: 400/500/600, crop 384..600 for 800).
    crop = (tuple(round(s * top / 800) for s in (400, 500, 600)), round(384 * top / 800), round(600 * top / 800))
    return make_transforms(train, scales=d.scales, max_size=d.max_size, crop=crop if d.random_crop else None,
                           val_scale=d.val_scale)


def build_datasets(cfg: Config, with_train: bool = True) -> RunData:
    """Scan and wrap the train and (if given) val datasets; labels are checked against num_classes."""
    from .data import build_dataset

    d, n = cfg.data, cfg.model.num_classes
    train = val = coco_gt = None
    if with_train:
        if not d.train_annotations:
            raise ValueError("no training data: give --train_images and --train_annotations (or --coco_path)")
        train = build_dataset(d.train_images, d.train_annotations, True, _transforms(cfg, True), n)
        most = max((len(r.target["labels"]) for r in train.report.records.values()), default=0)
        warn_if_too_few_queries(most, cfg.model.num_queries, d.train_annotations)
    if d.val_annotations:
        val = build_dataset(d.val_images, d.val_annotations, False, _transforms(cfg, False), n)
        coco_gt = val.coco
    return RunData(train, val, coco_gt)


def make_loader(dataset: Dataset, batch_size: int, train: bool, t: TrainConfig, rank: int, world: int,
                generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader whose batches come from an `EpochBatchSampler` for this process."""
    from .data import collate_fn

    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=train, drop_last=train, seed=t.seed,
                                rank=rank, world_size=world)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=t.num_workers,
                      generator=generator, persistent_workers=False)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    generator.set_state(state["generator"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(out_dir: Path | None, cfg: Config, p: dict[str, Any], state: dict[str, Any],
                             epoch_done: bool, is_best: bool = False) -> None:
    """Write `checkpoint.pth` (and `best.pth`) atomically; main process only.

    "epoch" is the epoch the checkpoint was written in; "step_in_epoch" is None when that
    epoch is complete, else the number of its steps already done (a run stopped by a signal).
    """
    if out_dir is None:
        return
    ckpt = {
        "model": p["model"].state_dict(),
        "optimizer": p["optimizer"].state_dict(),
        "lr_scheduler": p["lr_scheduler"].state_dict(),
        "scaler": p["scaler"].state_dict() if p["scaler"] is not None else None,
        "epoch": state["epoch"],
        "step_in_epoch": None if epoch_done else state["step"],
        "best_ap": state["best_ap"],
        "best_epoch": state["best_epoch"],
        "rng": rng_state(p["generator"]),
        "config": cfg.to_dict(),
        "class_names": cfg.data.class_names,
    }
    _write(out_dir / "checkpoint.pth", ckpt)
    if is_best:
        _write(out_dir / "best.pth", ckpt)


def _write(path: Path, ckpt: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        torch.save(ckpt, tmp)
        pause = float(os.environ.get(SLEEP_IN_WRITE_ENV, "0") or 0)
        if pause > 0:
            time.sleep(pause)

    atomic_write(path, write)


def restore_training_state(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           lr_scheduler: Any, scaler: Any, generator: torch.Generator) -> dict[str, Any]:
    """Load a training checkpoint into the run's objects; returns where to continue."""
    ckpt = load_checkpoint(path)
    load_model_weights(model, ckpt["model"], source=f"--resume {path}")
    missing = [k for k in ("optimizer", "lr_scheduler", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(f"--resume {path}: not a training checkpoint (no {', '.join(missing)}); "
                              "to start a new run from these weights use --weights")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"--resume {path}: the optimizer state does not fit this run ({e}); "
                              "were --lr_backbone or the frozen layers changed?") from None
    lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    step = ckpt.get("step_in_epoch")
    if step is not None and ckpt.get("rng"):  # continue the interrupted epoch with its exact random state
        set_rng_state(ckpt["rng"], generator)
    epoch = int(ckpt["epoch"]) + (1 if step is None else 0)
    if distributed.is_main_process():
        where = f"epoch {epoch}" + (f" step {step}" if step else "")
        print(f"resumed from {path}: continuing at {where}", flush=True)
    return {"epoch": epoch, "step": step or 0, "best_ap": ckpt.get("best_ap"), "best_epoch": ckpt.get("best_epoch")}


def write_eval_outputs(out_dir: Path | None, stats: dict[str, Any], detections: list[dict[str, Any]]) -> None:
    """Save the detections (COCO results format) and the 12 COCO numbers of the last evaluation."""
    if out_dir is None:
        return
    save_detections(out_dir / "detections_val.json", detections)
    summary = {k: stats[k] for k in ("coco_eval_bbox", "AP", "AP50", "AP75") if k in stats}
    atomic_write(out_dir / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
