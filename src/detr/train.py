"""The training driver: `train(cfg)` runs a whole training job from a `Config`.

Read top to bottom: check the options, join torchrun's process group (if any), resolve the
data, build model / criterion / optimizer / scheduler, load --weights or --resume, then for
every epoch train, evaluate, log and checkpoint. Only the main process prints and writes.

Resuming is exact (for num_workers=0 and deterministic kernels): the data order and the
random state at the start of every epoch depend only on (seed, epoch, rank), and a run
stopped by SIGINT/SIGTERM in the middle of an epoch saves its step and random state.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .checkpoint import load_checkpoint, load_model_weights
from .config import Config
from .criterion import create_criterion
from .engine import evaluate, train_one_epoch
from .models.detr import DETR, build_model
from .prepare import resolve_data, resolve_device, validate_config
from .run_state import (
    RunData,
    build_datasets,
    make_loader,
    restore_training_state,
    save_training_checkpoint,
    write_eval_outputs,
)
from .warmup import warm_up_backbone
from .weights import load_backbone_weights


class StopOnSignal:
    """While active, the first SIGINT/SIGTERM asks training to stop after the current step
    (and write a checkpoint); a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if distributed.is_main_process():
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                  "(send it again to stop at once)", flush=True)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int, epoch: int, rank: int, generator: torch.Generator) -> None:
    """Random state at the start of an epoch: a pure function of (seed, epoch, rank)."""
    value = (seed * 1_000_003 + epoch * 1009 + rank) % 2**63
    torch.manual_seed(value)
    random.seed(value)
    generator.manual_seed(value)


def param_groups(model: nn.Module, lr: float, lr_backbone: float) -> list[dict[str, Any]]:
    """Two AdamW groups, as the paper: the backbone at `lr_backbone`, everything else at `lr`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not n.startswith("backbone.")], "lr": lr},
              {"params": [p for n, p in named if n.startswith("backbone.")], "lr": lr_backbone}]
    return [g for g in groups if g["params"]]


def load_finetune_weights(model: nn.Module, path: str) -> None:
    """Load --weights (ours or official); a different class count or query count re-initialises that head."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    skip = []
    for prefix, what in (("class_embed.", "classes"), ("query_embed.", "queries")):
        key = prefix + "weight"
        if key in state and key in own and state[key].shape != own[key].shape:
            skip.append(prefix)
            if distributed.is_main_process():
                print(f"--weights {path}: the checkpoint has {state[key].shape[0]} {what} outputs, this model "
                      f"{own[key].shape[0]}: {prefix.rstrip('.')} is re-initialised for fine-tuning")
    load_model_weights(model, state, source=f"--weights {path}", skip_prefixes=tuple(skip))


def initialise_weights(model: DETR, cfg: Config, data: RunData, device: torch.device) -> None:
    """A fresh run's starting point: --weights; else --backbone_weights, then the optional
    backbone warm-up (every process does the same; DDP then copies rank 0's weights anyway)."""
    t = cfg.train
    if t.weights:
        load_finetune_weights(model, t.weights)
        return
    backbone = model.backbone[0]
    if t.backbone_weights != "none":
        path = load_backbone_weights(backbone, t.backbone_weights)
        if distributed.is_main_process():
            print(f"backbone starts from {path}", flush=True)
    if t.backbone_warmup:
        loader = make_loader(data.train, t.batch_size, True, t, distributed.rank(), distributed.world_size())
        main = distributed.is_main_process()
        stats = warm_up_backbone(backbone, loader, cfg.model.num_classes, t.backbone_warmup, device,
                                 log_every=50 if main else 0)
        if main:
            print(f"backbone warm-up: {t.backbone_warmup} steps, last loss {stats['loss']:.3f}", flush=True)


def train(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Train (and evaluate every `eval_every` epochs) as `cfg` says; returns a summary dict.

    Raises ValueError / CheckpointError / DatasetError for bad options or files (before any
    work) and NonFiniteLossError when the loss or gradients become NaN/inf.
    """
    validate_config(cfg)
    device = resolve_device(cfg.train.device)
    started = distributed.init_from_env(device)
    try:
        if device.type == "cuda" and distributed.is_distributed():
            device = torch.device("cuda", torch.cuda.current_device())
        cfg = resolve_data(cfg)
        return _train(cfg, device, progress)
    finally:
        if started:
            distributed.cleanup()


def _train(cfg: Config, device: torch.device, progress: bool) -> dict[str, Any]:
    t, rank, world = cfg.train, distributed.rank(), distributed.world_size()
    main = distributed.is_main_process()
    out_dir = Path(t.output_dir) if t.output_dir and main else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".*.pth.*.tmp"):  # left by a run killed while writing a checkpoint
            stale.unlink(missing_ok=True)
    torch.manual_seed(t.seed)  # the same initial model on every process
    model = build_model(cfg.model).to(device)
    criterion = create_criterion(cfg.model.num_classes, cfg.model.dec_layers, cfg.model.aux_loss,
                                 **vars(cfg.loss)).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, t.lr, t.lr_backbone), lr=t.lr, weight_decay=t.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, t.lr_drop)
    scaler = torch.amp.GradScaler(device.type) if t.amp == "fp16" else None
    data: RunData = build_datasets(cfg)
    generator = torch.Generator()
    train_loader = make_loader(data.train, t.batch_size, True, t, rank, world, generator)
    val_loader = make_loader(data.val, t.batch_size, False, t, rank, world) if data.val is not None else None

    state = {"epoch": 0, "step": 0, "best_ap": None, "best_epoch": None}
    if t.resume:
        state = restore_training_state(t.resume, model, optimizer, lr_scheduler, scaler, generator)
    else:
        initialise_weights(model, cfg, data, device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ddp_model = model
    if distributed.is_distributed():
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    if main:
        print(f"training {n_parameters:,} parameters on {len(data.train)} images ({world} process(es), {device}); "
              f"epochs {state['epoch']}..{t.epochs - 1}, output: {t.output_dir or '(not saved)'}", flush=True)
    parts = dict(model=model, ddp_model=ddp_model, criterion=criterion, optimizer=optimizer,
                 lr_scheduler=lr_scheduler, scaler=scaler, generator=generator, data=data,
                 train_loader=train_loader, val_loader=val_loader, device=device, out_dir=out_dir,
                 n_parameters=n_parameters)
    return _epochs(cfg, parts, state, progress)


def _epochs(cfg: Config, p: dict[str, Any], state: dict[str, Any], progress: bool) -> dict[str, Any]:
    t, rank = cfg.train, distributed.rank()
    start_time = time.time()
    last_test: dict[str, Any] = {}
    epoch, stopped = state["epoch"], None
    if p["out_dir"]:
        _truncate_log(p["out_dir"] / "log.txt", epoch)
    with StopOnSignal() as stop:
        while epoch < t.epochs:
            if state["step"] == 0:
                seed_everything(t.seed, epoch, rank, p["generator"])
            p["train_loader"].batch_sampler.set_epoch(epoch, state["step"])
            steps_left = len(p["train_loader"])
            train_stats, steps = train_one_epoch(
                p["ddp_model"], p["criterion"], p["train_loader"], p["optimizer"], p["device"], epoch,
                t.clip_max_norm, t.amp, p["scaler"], lambda: stop.requested, state["step"], progress)
            if steps - state["step"] < steps_left:  # a signal stopped the epoch part-way
                state["step"] = steps
                save_training_checkpoint(p["out_dir"], cfg, p, state, epoch_done=False)
                stopped = f"stopped by a signal at epoch {epoch} step {steps}"
                break
            p["lr_scheduler"].step()
            test_stats = _maybe_evaluate(cfg, p, epoch, progress)
            last_test = test_stats or last_test
            is_best = _update_best(state, test_stats, epoch)
            _write_log(p["out_dir"], train_stats, test_stats, epoch, p["n_parameters"])
            state.update(epoch=epoch, step=0)
            save_training_checkpoint(p["out_dir"], cfg, p, state, epoch_done=True, is_best=is_best)
            epoch += 1
            if distributed.any_process(stop.requested):
                stopped = f"stopped by a signal after epoch {epoch - 1}"
                break
    summary = {"epochs_done": epoch, "best_ap": state["best_ap"], "best_epoch": state["best_epoch"],
               "last_test": last_test, "stopped": stopped, "minutes": (time.time() - start_time) / 60,
               "output_dir": t.output_dir}
    if distributed.is_main_process():
        print_summary(summary)
    return summary


def _maybe_evaluate(cfg: Config, p: dict[str, Any], epoch: int, progress: bool) -> dict[str, Any] | None:
    t = cfg.train
    if p["val_loader"] is None or ((epoch + 1) % t.eval_every and epoch + 1 != t.epochs):
        return None
    stats, detections = evaluate(p["ddp_model"], p["criterion"], p["val_loader"], p["data"].coco_gt,
                                 p["device"], t.amp, progress)
    write_eval_outputs(p["out_dir"], stats, detections)
    return stats


def _update_best(state: dict[str, Any], test_stats: dict[str, Any] | None, epoch: int) -> bool:
    if not test_stats:
        return False
    ap = test_stats["AP"]
    if state["best_ap"] is None or ap > state["best_ap"]:
        state.update(best_ap=ap, best_epoch=epoch)
        return True
    return False


def _write_log(out_dir: Path | None, train_stats: dict[str, Any], test_stats: dict[str, Any] | None,
               epoch: int, n_parameters: int) -> None:
    """One JSON line per epoch, with the official log.txt keys (train_*, test_*, epoch, n_parameters)."""
    if out_dir is None:
        return
    line = {f"train_{k}": v for k, v in train_stats.items()}
    line.update({f"test_{k}": v for k, v in (test_stats or {}).items() if k != "coco_summary"})
    line.update(epoch=epoch, n_parameters=n_parameters)
    with open(out_dir / "log.txt", "a") as f:
        f.write(json.dumps(line) + "\n")


def _truncate_log(path: Path, first_epoch: int) -> None:
    """On resume, drop log lines of epochs that will be run again."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", -1) < first_epoch:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    path.write_text("".join(k + "\n" for k in keep))


def print_summary(summary: dict[str, Any]) -> None:
    """A few readable lines at the end of a run."""
    print(f"\ndone: {summary['epochs_done']} epoch(s) in {summary['minutes']:.1f} min"
          + (f" ({summary['stopped']})" if summary["stopped"] else ""))
    test = summary["last_test"]
    if test:
        print(test.get("coco_summary", ""))
        print(f"last val AP {test['AP']:.3f}  AP50 {test['AP50']:.3f}  AP75 {test['AP75']:.3f}")
    if summary["best_ap"] is not None:
        print(f"best val AP {summary['best_ap']:.3f} at epoch {summary['best_epoch']}")
    if summary["output_dir"]:
        print(f"checkpoints and log.txt in {summary['output_dir']}")
