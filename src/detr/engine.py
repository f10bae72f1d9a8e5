"""One epoch of training and one pass of evaluation: two plain functions.

Both take explicit objects (model, criterion, loader, ...) and no configuration. A batch
is what `detr.data.collate_fn` makes: a list of [3, H, W] images and a list of target
dicts ("boxes" [N, 4] cxcywh in [0, 1], "labels" [N], "image_id", "orig_size" (h, w), ...).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import distributed
from .coco_eval import STAT_NAMES, coco_bbox_eval, gather_detections, to_coco_detections
from .postprocess import postprocess


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; the message says where."""


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `amp` in {"none", "bf16", "fp16"}."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def move_batch(images: list[Tensor], targets: list[dict[str, Any]], device: torch.device):
    """Images and the tensors of every target dict on `device`."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
    return images, targets


def _float_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """The loss is computed in float32 whatever precision the forward pass used."""
    out = {k: v.float() for k, v in outputs.items() if isinstance(v, Tensor)}
    if "aux_outputs" in outputs:
        out["aux_outputs"] = [{k: v.float() for k, v in a.items()} for a in outputs["aux_outputs"]]
    return out


def _reduce_for_logging(losses: dict[str, Tensor], weight_dict: dict[str, float],
                        stop: bool) -> tuple[dict[str, float], bool]:
    """Average the loss terms over processes in one collective, with a "please stop" flag.

    Every process gets the same numbers, so a NaN or a stop request is seen by all of
    them at the same step and no process is left waiting in a collective.
    """
    names = sorted(losses)
    values = torch.stack([losses[k].detach().float() for k in names] + [torch.zeros_like(losses[names[0]])])
    values[-1] = float(stop)
    if distributed.is_distributed():
        torch.distributed.all_reduce(values)
        values[:-1] /= distributed.world_size()
    stats = dict(zip(names, values[:-1].tolist()))
    stats["loss"] = sum(stats[k] * w for k, w in weight_dict.items() if k in stats)
    return stats, bool(values[-1] > 0)


def _check_finite_loss(stats: dict[str, float], epoch: int, step: int) -> None:
    if math.isfinite(stats["loss"]):
        return
    bad = [f"{k}={v}" for k, v in sorted(stats.items()) if k != "loss" and not math.isfinite(v)]
    raise NonFiniteLossError(f"epoch {epoch} step {step}: the loss is {stats['loss']} (non-finite terms: "
                             f"{', '.join(bad) or 'none'}); training stopped, the last checkpoint is kept. "
                             "Try a lower --lr, a smaller --clip_max_norm or --amp none.")


def _check_finite_grads(model: nn.Module, grad_norm: Tensor, epoch: int, step: int) -> None:
    if torch.isfinite(grad_norm):
        return
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    raise NonFiniteLossError(f"epoch {epoch} step {step}: non-finite gradient (norm {grad_norm.item()}) in "
                             f"{len(bad)} parameter(s), e.g. {bad[:3]}; training stopped, the last checkpoint "
                             "is kept. Try a lower --lr or --amp none.")


class _Averages:
    """Running means of logged numbers (every process holds the same, already reduced, values)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, clip_max_norm: float = 0.1, amp: str = "none",
                    scaler: torch.amp.GradScaler | None = None, should_stop: Callable[[], bool] = lambda: False,
                    start_step: int = 0, progress: bool = True) -> tuple[dict[str, float], int]:
    """Train for one pass over `loader`.

    Stops early (after finishing the current step) when `should_stop()` becomes true on any
    process. Returns the mean of every logged number (losses, "loss", "lr") and the number
    of steps done in this epoch so far (counting `start_step`, the steps done before a resume).
    Raises `NonFiniteLossError` on a NaN/inf loss or gradient, before the optimizer step.
    """
    model.train()
    criterion.train()
    averages = _Averages()
    step = start_step
    total = start_step + len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(loader, desc=f"epoch {epoch}", total=total, initial=start_step, dynamic_ncols=True,
               disable=not (progress and distributed.is_main_process()))
    for images, targets in bar:
        images, targets = move_batch(images, targets, device)
        with autocast(device, amp):
            outputs = model(images)
        losses = criterion(_float_outputs(outputs), targets)
        loss = criterion.total_loss(losses)
        stats, stop = _reduce_for_logging(losses, criterion.weight_dict, should_stop())
        _check_finite_loss(stats, epoch, step)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16: scale the loss so small gradients do not underflow
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        max_norm = clip_max_norm if clip_max_norm > 0 else math.inf  # inf: only measure the norm
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if scaler is not None:
            scaler.step(optimizer)  # skips the step itself when fp16 gradients overflowed
            scaler.update()
        else:
            _check_finite_grads(model, grad_norm, epoch, step)
            optimizer.step()

        stats["lr"] = optimizer.param_groups[0]["lr"]
        averages.update(stats)
        step += 1
        bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}")
        if stop:
            break
    bar.close()
    return averages.means(), step


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: Iterable, coco_gt: Any, device: torch.device,
             amp: str = "none", progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Losses and COCO bbox AP on `loader`, with detections gathered from every process.

    Returns the stats (mean losses, "coco_eval_bbox": the 12 COCOeval numbers, "AP", "AP50",
    ..., and "coco_summary": COCOeval's printed table) and the detections in COCO results format.
    """
    model.eval()
    criterion.eval()
    averages = _Averages()
    detections: list[dict[str, Any]] = []
    image_ids: list[int] = []
    bar = tqdm(loader, desc="eval", dynamic_ncols=True, disable=not (progress and distributed.is_main_process()))
    for images, targets in bar:
        images, targets = move_batch(images, targets, device)
        with autocast(device, amp):
            outputs = _float_outputs(model(images))
        losses = criterion(outputs, targets)
        stats, _ = _reduce_for_logging(losses, criterion.weight_dict, stop=False)
        averages.update(stats)
        orig_sizes = torch.stack([torch.as_tensor(t["orig_size"], device=device) for t in targets])
        ids = [int(t["image_id"]) for t in targets]
        detections += to_coco_detections(postprocess(outputs, orig_sizes), ids)
        image_ids += ids
    bar.close()

    detections, image_ids = gather_detections(detections, image_ids)
    stats = averages.means()
    if distributed.is_main_process():
        coco_stats, summary = coco_bbox_eval(coco_gt, detections, image_ids)
    else:
        coco_stats, summary = [], ""
    coco_stats = _broadcast(coco_stats)
    stats.update({"coco_eval_bbox": coco_stats, "coco_summary": summary, **dict(zip(STAT_NAMES, coco_stats))})
    return stats, detections


def _broadcast(values: list[float]) -> list[float]:
    """Rank 0's list on every process (COCOeval runs once, on rank 0)."""
    if not distributed.is_distributed():
        return values
    box = [values]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
