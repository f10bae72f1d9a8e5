"""The training driver: `train(cfg)` runs a whole training job from a `Config`.

Read top to bottom: check the options, join torchrun's process group (if any), resolve the
data, build model / criterion / optimizer / scheduler, load --weights or --resume, then for
every epoch train, evaluate, log (log.txt, and --logger's backends: loggers.py) and checkpoint, until
--epochs or --patience (early stopping) ends the run. Only the main process prints and writes.

Resuming is exact (for num_workers=0 and deterministic kernels): the data order and the
random state at the start of every epoch depend only on (seed, epoch, rank), and a run
stopped by SIGINT/SIGTERM in the middle of an epoch saves its step and random state.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed
from ..checkpoint import output_folder
from ..config import Config
from ..data.loaders import RunData, build_datasets, make_loader, resolve_data
from ..evaluation.data_picture import write_data_picture
from ..evaluation.evaluate import eval_summary, evaluate, write_eval_outputs
from ..loss.criterion import create_criterion
from ..models.build import Model, build_model
from ..models.segmentation import DETRsegm
from ..runtime import resolve_device
from ..validation import validate_config
from ..weights.finetune import load_finetune_weights, load_frozen_detector, read_finetune_weights
from ..weights.loading import load_backbone_weights
from .ema import create_ema
from .engine import train_one_epoch
from .loggers import (
    ExperimentLoggers,
    ProgressLines,
    bars_shown,
    check_loggers,
    create_loggers,
    train_scalars,
    val_scalars,
)
from .state import Progress, Run, restore_training_state, save_training_checkpoint
from .warmup import warm_up_backbone

log = logging.getLogger(__name__)


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
            log.warning("%s: stopping after this step and saving a checkpoint (send it again to stop at once)",
                        signal.Signals(signum).name)

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
    """Two AdamW groups, as the paper: the backbone at `lr_backbone` (a segmentation model's `detr.backbone`
    too), everything else at `lr`."""
    named = [(n.removeprefix("detr."), p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not n.startswith("backbone.")], "lr": lr},
              {"params": [p for n, p in named if n.startswith("backbone.")], "lr": lr_backbone}]
    return [g for g in groups if g["params"]]


def initialise_weights(model: Model, cfg: Config, data: RunData, device: torch.device,
                       weights: dict[str, Tensor] | None = None) -> None:
    """A fresh run's starting point: --frozen_weights (the detector) or --weights (`weights`: its state dict when
    already read); else --backbone_weights, then the optional backbone warm-up (every process does the same; DDP
    then copies rank 0's weights anyway)."""
    t = cfg.train
    if t.frozen_weights:
        assert isinstance(model, DETRsegm)  # validate_config: --frozen_weights needs --masks
        load_frozen_detector(model, t.frozen_weights)
        return
    if t.weights:
        load_finetune_weights(model, t.weights if weights is None else weights, f"--weights {t.weights}")
        return
    backbone = model.backbone[0]
    main = distributed.is_main_process()
    if t.backbone_weights != "none":
        path = load_backbone_weights(backbone, t.backbone_weights)
        if main:
            log.info("backbone starts from %s", path)
    if t.backbone_warmup:
        loader = make_loader(data.train, t.batch_size, True, t.seed, t.num_workers, group_by_aspect=t.group_by_aspect)
        stats = warm_up_backbone(backbone, loader, cfg.model.num_classes, t.backbone_warmup, device,
                                 log_every=50 if main else 0, amp=t.amp)
        if main:
            log.info("backbone warm-up: %d steps, last loss %.3f", t.backbone_warmup, stats["loss"])


def train(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Train (and evaluate every `eval_every` epochs) as `cfg` says; returns a summary dict.

    Raises ValueError / CheckpointError / DatasetError for bad options or files (before any
    work) and NonFiniteLossError when the loss or gradients become NaN/inf.
    """
    validate_config(cfg)
    check_loggers(cfg.train.logger)  # a missing package is named before any work
    weights = None
    if cfg.train.weights:  # read once; a file of the other model family is refused before any data is read
        weights = read_finetune_weights(cfg.train.weights, cfg.model.family)
    device = resolve_device(cfg.train.device, "--device")
    started = distributed.init_from_env(device)
    try:
        if device.type == "cuda" and distributed.is_distributed():
            device = torch.device("cuda", torch.cuda.current_device())
        cfg = resolve_data(cfg)
        run, start = _prepare(cfg, device, weights)
        weights = None  # loaded into the model: not kept through training
        return _epochs(cfg, run, start, progress)
    finally:
        if started:
            distributed.cleanup()


def _prepare(cfg: Config, device: torch.device, weights: dict[str, Tensor] | None = None) -> tuple[Run, Progress]:
    """Build the run's objects and load --resume (returning where it stopped) or the starting weights (`weights`:
    --weights' state dict, already read)."""
    t = cfg.train
    out_dir = output_folder(t.output_dir, "--output_dir") if t.output_dir and distributed.is_main_process() else None
    if out_dir:
        for stale in out_dir.glob(".*.pth.*.tmp"):  # left by a run killed while writing a checkpoint
            stale.unlink(missing_ok=True)
    torch.manual_seed(t.seed)  # the same initial model on every process
    model = build_model(cfg.model).to(device)
    if t.frozen_weights:  # before the optimizer is made: it only gets the mask head (as the official code)
        assert isinstance(model, DETRsegm)
        model.freeze_detector()
    # fused on CPU: one kernel per tensor, ~4x faster than the per-op loop on DETR's ~200 small tensors
    # (BENCHMARKS.md, "Demos"); CUDA keeps torch's default, as the official code.
    optimizer = torch.optim.AdamW(param_groups(model, t.lr, t.lr_backbone), lr=t.lr, weight_decay=t.weight_decay,
                                  fused=device.type == "cpu" or None)
    data = build_datasets(cfg)
    generator = torch.Generator()
    run = Run(
        model=model, ddp_model=model, optimizer=optimizer,
        criterion=create_criterion(cfg.model.num_classes, cfg.model.dec_layers, cfg.model.aux_loss, cfg.model.class_loss,
                                   cfg.model.dn_number > 0, cfg.model.masks,
                                   **vars(cfg.loss)).to(device),
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, t.lr_drop),
        scaler=torch.amp.GradScaler(device.type) if t.amp == "fp16" else None,
        generator=generator, data=data,
        train_loader=make_loader(data.train, t.batch_size, True, t.seed, t.num_workers, generator,
                                 t.steps_per_epoch, t.group_by_aspect),
        val_loader=make_loader(data.val, t.batch_size, False, t.seed, t.num_workers) if data.val is not None else None,
        device=device, out_dir=out_dir,
        n_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        ema=create_ema(model, t.ema_decay) if t.ema_decay else None)
    if t.resume:
        start = restore_training_state(t.resume, run)
    else:
        start = Progress()
        initialise_weights(model, cfg, data, device, weights)
    if distributed.is_distributed():
        run.ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                            else None)
    if distributed.is_main_process():
        log.info("training %s parameters on %d images (%d process(es), %s); epochs %d..%d, output: %s",
                 f"{run.n_parameters:,}", len(data.train), distributed.world_size(), device, start.epoch,
                 t.epochs - 1, t.output_dir or "(not saved)")
    if out_dir and not t.resume:  # what the model will see: class balance, box sizes, augmented images
        write_data_picture(data.train, out_dir / "data.png", title=f"training data: {cfg.data.train_annotations}")
    return run, start


def _epochs(cfg: Config, run: Run, at: Progress, progress: bool) -> dict[str, Any]:
    """The epoch loop: train, evaluate, log, checkpoint, until --epochs, --patience or a signal stops it."""
    t = cfg.train
    start_time = time.time()
    last_test: dict[str, Any] = {}
    stopped = None
    if run.out_dir:
        _truncate_log(run.out_dir / "log.txt", at.epoch)
    loggers = create_loggers(t.logger, run.out_dir, cfg)
    lines = ProgressLines(t.epochs, at.epoch, distributed.is_main_process() and not bars_shown(progress))
    try:
        with StopOnSignal() as stop:
            while at.epoch < t.epochs and stopped is None:
                test_stats, stopped = _epoch(cfg, run, at, stop, progress, (loggers, lines))
                last_test = test_stats or last_test
    finally:
        loggers.close()
    summary = {"epochs_done": at.epoch, "best_value": at.best_value, "best_metric": at.best_metric,
               "best_epoch": at.best_epoch,
               "last_test": last_test, "stopped": stopped, "minutes": (time.time() - start_time) / 60,
               "output_dir": t.output_dir}
    if distributed.is_main_process():
        log_summary(summary)
    return summary


def _epoch(cfg: Config, run: Run, at: Progress, stop: StopOnSignal, progress: bool,
           report: tuple[ExperimentLoggers, ProgressLines]) -> tuple[dict[str, Any] | None, str | None]:
    """Epoch `at.epoch` (from step `at.step`): train, evaluate, log, checkpoint. Returns its val stats and why the
    run stops after it (None: it goes on); a signal may stop it after the current step."""
    t, epoch = cfg.train, at.epoch
    if at.step == 0:
        seed_everything(t.seed, epoch, distributed.rank(), run.generator)
    run.train_loader.batch_sampler.set_epoch(epoch, at.step)
    steps_left = len(run.train_loader)
    train_stats, steps = train_one_epoch(
        run.ddp_model, run.criterion, run.train_loader, run.optimizer, run.device, epoch,
        t.clip_max_norm, t.amp, run.scaler, lambda: stop.requested, at.step, progress, run.ema)
    if steps - at.step < steps_left:  # a signal stopped the epoch part-way
        at.step = steps
        save_training_checkpoint(run, cfg, at, epoch_done=False)
        return None, f"stopped by a signal at epoch {epoch} step {steps}"
    lrs = [g["lr"] for g in run.optimizer.param_groups]  # this epoch's, before the scheduler moves them
    run.lr_scheduler.step()
    test_stats = _maybe_evaluate(cfg, run, epoch, progress)
    is_best = at.update_best(test_stats, epoch)
    _write_log(run.out_dir, train_stats, test_stats, epoch, run.n_parameters)
    at.step = 0
    save_training_checkpoint(run, cfg, at, epoch_done=True, is_best=is_best)
    at.epoch += 1
    _report(cfg, run, *report, epoch, (train_stats, lrs), test_stats)
    if at.out_of_patience(t.patience):  # test_stats are the same on every process: all stop together
        return test_stats, early_stop_reason(at, t.patience)
    if distributed.any_process(stop.requested):
        return test_stats, f"stopped by a signal after epoch {epoch}"
    return test_stats, None


def early_stop_reason(at: Progress, patience: int | None) -> str:
    """Why --patience stopped the run: the metric, its best value and the evaluation it came from."""
    name = {"PQ": "PQ", "mask_AP": "mask AP"}.get(at.best_metric or "", "AP")
    return (f"early stopping: val {name} did not improve in the last {patience} evaluation(s); best "
            f"{at.best_value:.4f} from the evaluation after epoch {at.best_epoch} (best.pth)")


def _report(cfg: Config, run: Run, loggers: ExperimentLoggers, lines: ProgressLines, epoch: int,
            train: tuple[dict[str, float], list[float]], test_stats: dict[str, Any] | None) -> None:
    """The epoch's progress lines and experiment logs (main process only); nothing here changes training."""
    train_stats, lrs = train
    lines.epoch(epoch, train_stats)
    step = (epoch + 1) * len(run.train_loader)  # optimizer steps done: the x axis of every logged number
    loggers.scalars(train_scalars(train_stats, lrs), step)
    if test_stats is None:
        return
    lines.evaluation(epoch, test_stats)
    loggers.scalars(val_scalars(test_stats), step)
    model = run.model if run.ema is None else run.ema.module  # the evaluated weights
    loggers.predictions(model, run.data.val, cfg, run.device, step)


def _maybe_evaluate(cfg: Config, run: Run, epoch: int, progress: bool) -> dict[str, Any] | None:
    t = cfg.train
    if run.val_loader is None or ((epoch + 1) % t.eval_every and epoch + 1 != t.epochs):
        return None
    model = run.ddp_model if run.ema is None else run.ema.module  # the average: what the checkpoint saves
    stats, detections = evaluate(model, run.criterion, run.val_loader, run.data.coco_gt, run.device,
                                 t.amp, progress, run.data.panoptic, run.out_dir)
    write_eval_outputs(run.out_dir, stats, detections, cfg.data.category_ids)
    return stats


def _write_log(out_dir: Path | None, train_stats: dict[str, Any], test_stats: dict[str, Any] | None,
               epoch: int, n_parameters: int) -> None:
    """One JSON line per epoch, with the official log.txt keys (train_*, test_*, epoch, n_parameters)."""
    if out_dir is None:
        return
    line = {f"train_{k}": v for k, v in train_stats.items()}
    line.update({f"test_{k}": v for k, v in (test_stats or {}).items() if not k.endswith("_summary")})
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


def log_summary(summary: dict[str, Any]) -> None:
    """A few readable lines at the end of a run."""
    lines = [f"done: {summary['epochs_done']} epoch(s) in {summary['minutes']:.1f} min"
             + (f" ({summary['stopped']})" if summary["stopped"] else "")]
    test = summary["last_test"]
    if test:
        lines += [eval_summary(test),
                  f"last val AP {test['AP']:.3f}  AP50 {test['AP50']:.3f}  AP75 {test['AP75']:.3f}"]
    if summary["best_value"] is not None:
        name = {"PQ": "PQ", "mask_AP": "mask AP"}.get(summary["best_metric"], "AP")
        lines.append(f"best val {name} {summary['best_value']:.3f} at epoch {summary['best_epoch']} (best.pth)")
    if summary["output_dir"]:
        lines.append(f"checkpoints and log.txt in {summary['output_dir']}")
    log.info("\n".join(lines))
