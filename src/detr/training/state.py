"""A training run's state, typed: the live objects (`Run`), where it stands (`Progress`), and the
training checkpoint that holds both (what it contains, how it is written and how a run resumes)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from .. import distributed
from ..checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from ..config import Config
from ..data.loaders import RunData
from ..loss.criterion import SetCriterion
from ..models.build import Model

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands: the epoch to run next, and how many of its steps are already done."""

    epoch: int = 0
    step: int = 0  # > 0 only when resuming an epoch that a signal interrupted
    best_value: float | None = None  # of `best_metric`, over the epochs evaluated so far
    best_epoch: int | None = None
    best_metric: str | None = None
    evals_since_best: int = 0  # evaluations after the one of best_value (early stopping counts them)

    def update_best(self, test_stats: dict[str, Any] | None, epoch: int) -> bool:
        """Record `epoch`'s val selection metric if it is the best so far; True when it is."""
        if not test_stats:
            return False
        name = selection_metric(test_stats)
        if self.best_metric != name:  # a run resumed with masks added or removed: the old best does not compare
            self.best_value = None
        if self.best_value is not None and test_stats[name] <= self.best_value:
            self.evals_since_best += 1
            return False
        self.best_value, self.best_epoch, self.best_metric = test_stats[name], epoch, name
        self.evals_since_best = 0
        return True

    def out_of_patience(self, patience: int | None) -> bool:
        """Whether early stopping ends the run: `patience` evaluations in a row without a better value."""
        return patience is not None and self.evals_since_best >= patience


def selection_metric(test_stats: dict[str, Any]) -> str:
    """The val number that picks best.pth: PQ on panoptic data, else mask AP when the model predicts masks, else
    box AP. (A mask head trained on a frozen detector leaves box AP unchanged: box AP cannot choose its epochs.)"""
    return next(name for name in ("PQ", "mask_AP", "AP") if name in test_stats)


@dataclass
class Run:
    """The objects of one training job (on this process)."""

    model: Model
    ddp_model: nn.Module  # `model`, wrapped in DistributedDataParallel under torchrun
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    generator: torch.Generator  # the training loader's shuffling and workers' seeds
    data: RunData
    train_loader: DataLoader
    val_loader: DataLoader | None
    device: torch.device
    out_dir: Path | None  # None on other processes than the main one, or when nothing is saved
    n_parameters: int
    ema: AveragedModel | None = None  # --ema_decay: the average of `model`'s weights, evaluated and saved


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    generator.set_state(state["generator"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(run: Run, cfg: Config, progress: Progress, epoch_done: bool,
                             is_best: bool = False) -> None:
    """Write `checkpoint.pth` (and `best.pth`) atomically; main process only.

    "epoch" is the epoch the checkpoint was written in; "step_in_epoch" is None when that
    epoch is complete, else the number of its steps already done (a run stopped by a signal).
    With --ema_decay, "model" is the weight average (what was evaluated, and what every reader of the file
    loads) and "training_model" the optimizer's weights, with "ema_updates" the average's update count.
    """
    if run.out_dir is None:
        return
    averaged = {} if run.ema is None else {"training_model": run.model.state_dict(),
                                           "ema_updates": int(run.ema.n_averaged)}
    ckpt = {
        "model": run.model.state_dict() if run.ema is None else run.ema.module.state_dict(),
        **averaged,
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "epoch": progress.epoch,
        "step_in_epoch": None if epoch_done else progress.step,
        "best_value": progress.best_value,
        "best_metric": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "evals_since_best": progress.evals_since_best,
        "rng": rng_state(run.generator),
        "config": cfg.to_dict(),
        "class_names": cfg.data.class_names,
    }
    save_checkpoint(run.out_dir / "checkpoint.pth", ckpt)
    if is_best:
        save_checkpoint(run.out_dir / "best.pth", ckpt)


def restore_training_state(path: str, run: Run) -> Progress:
    """Load a training checkpoint into the run's objects; returns where to continue."""
    ckpt = load_checkpoint(path)
    _restore_weights(ckpt, run, path)
    missing = [k for k in ("optimizer", "lr_scheduler", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(f"--resume {path}: not a training checkpoint (no {', '.join(missing)}); "
                              "to start a new run from these weights use --weights")
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"--resume {path}: the optimizer state does not fit this run ({e}); "
                              "were --lr_backbone or the frozen layers changed?") from None
    run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    step = ckpt.get("step_in_epoch")
    if step is not None and ckpt.get("rng"):  # continue the interrupted epoch with its exact random state
        set_rng_state(ckpt["rng"], run.generator)
    epoch = int(ckpt["epoch"]) + (1 if step is None else 0)
    if distributed.is_main_process():
        log.info("resumed from %s: continuing at epoch %d%s", path, epoch, f" step {step}" if step else "")
    # checkpoints written before early stopping existed count from 0
    return Progress(epoch, step or 0, *best_so_far(ckpt), evals_since_best=int(ckpt.get("evals_since_best") or 0))


def best_so_far(ckpt: dict[str, Any]) -> tuple[float | None, int | None, str | None]:
    """(value, epoch, metric) of a training checkpoint's best.pth; checkpoints written before best_metric
    existed chose it by box AP, under "best_ap"."""
    if "best_value" in ckpt:
        return ckpt["best_value"], ckpt.get("best_epoch"), ckpt.get("best_metric")
    return ckpt.get("best_ap"), ckpt.get("best_epoch"), "AP" if ckpt.get("best_ap") is not None else None


def _restore_weights(ckpt: dict[str, Any], run: Run, path: str) -> None:
    """The optimizer's weights into `run.model` and, with --ema_decay, the weight average into `run.ema`.
    A file without an average starts one (from the next step's weights); a run without --ema_decay drops it."""
    training = ckpt.get("training_model")
    load_model_weights(run.model, ckpt["model"] if training is None else training, source=f"--resume {path}")
    if run.ema is None:
        if training is not None and distributed.is_main_process():
            log.info("--resume %s: its weight average is dropped (no --ema_decay given)", path)
        return
    if training is None:
        if distributed.is_main_process():
            log.info("--resume %s: holds no weight average; --ema_decay starts one from here", path)
        return
    load_model_weights(run.ema.module, ckpt["model"], source=f"--resume {path} (weight average)")
    run.ema.n_averaged.fill_(int(ckpt["ema_updates"]))
