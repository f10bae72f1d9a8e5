"""One epoch of training: a plain function of explicit objects (model, criterion, loader, ...).

A batch is what `detr.data.collate_fn` makes: a list of [3, H, W] images and a list of target
dicts ("boxes" [N, 4] cxcywh in [0, 1], "labels" [N], "image_id", "orig_size" (h, w), ...).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .. import distributed
from ..data.coco import move_batch
from ..loss_stats import RunningMeans, float_outputs, reduce_losses
from ..models.segmentation import DETRsegm
from ..runtime import autocast

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; the message says where."""


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


def clip_gradients(model: nn.Module, max_norm: float) -> Tensor:
    """Clip the gradient norm to `max_norm` (inf: only measure it); returns the norm of all gradients before.

    A segmentation model trained jointly clips its detector and its mask head each on its own: the detector's
    gradient norm is ~50x the mask head's, and one global clip at the official 0.1 scales the mask head's
    query pathway (attention map projections, the first convolution's attention channels) to ~1e-9 per
    element, below AdamW's eps (1e-8), so that it barely moves and every query keeps predicting the same mask.
    A detector alone, or a mask head on a frozen detector (the official recipe), is one group: the official clip.
    """
    inner = getattr(model, "module", model)  # (DDP)
    groups = inner.clip_groups() if isinstance(inner, DETRsegm) else [list(model.parameters())]
    norms = [nn.utils.clip_grad_norm_(params, max_norm) for params in groups]
    return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))


def _backward_and_step(loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler | None, clip_max_norm: float, epoch: int, step: int) -> None:
    """Back-propagate, clip the gradient norm and step (fp16: through the GradScaler)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16: scale the loss so small gradients do not underflow
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    max_norm = clip_max_norm if clip_max_norm > 0 else math.inf  # inf: only measure the norm
    grad_norm = clip_gradients(model, max_norm)
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself when fp16 gradients overflowed
        scaler.update()
    else:
        _check_finite_grads(model, grad_norm, epoch, step)
        optimizer.step()


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, clip_max_norm: float = 0.1, amp: str = "none",
                    scaler: torch.amp.GradScaler | None = None, should_stop: Callable[[], bool] = lambda: False,
                    start_step: int = 0, progress: bool = True,
                    ema: AveragedModel | None = None) -> tuple[dict[str, float], int]:
    """Train for one pass over `loader` (and move `ema`, a weight average, after every step).

    Stops early (after finishing the current step) when `should_stop()` becomes true on any
    process. Returns the mean of every logged number (losses, "loss", "lr") and the number
    of steps done in this epoch so far (counting `start_step`, the steps done before a resume).
    Raises `NonFiniteLossError` on a NaN/inf loss or gradient, before the optimizer step.
    """
    model.train()
    criterion.train()
    averages = RunningMeans()
    step = start_step
    total = start_step + len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(loader, desc=f"epoch {epoch}", total=total, initial=start_step, dynamic_ncols=True,
               disable=None if progress and distributed.is_main_process() else True)
    for images, targets in bar:
        images, targets = move_batch(images, targets, device)
        with autocast(device, amp):
            outputs = model(images, targets=targets)  # targets feed denoising queries, if any
        losses = criterion(float_outputs(outputs), targets)
        loss = criterion.total_loss(losses)
        stats, stop = reduce_losses(losses, criterion.weight_dict, should_stop())
        _check_finite_loss(stats, epoch, step)

        _backward_and_step(loss, model, optimizer, scaler, clip_max_norm, epoch, step)
        if ema is not None:
            ema.update_parameters(model)
        stats["lr"] = optimizer.param_groups[0]["lr"]
        averages.update(stats)
        step += 1
        bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}")
        if distributed.is_main_process():
            log.debug("epoch %d step %d/%s: loss %.4f lr %.2e", epoch, step, total, stats["loss"], stats["lr"])
        if stop:
            break
    bar.close()
    return averages.means(), step
