"""Evaluation: losses and COCO bbox AP of a model on a validation loader, and of a saved checkpoint; for a
segmentation model also mask AP and, on panoptic data, panoptic quality (segm_eval.py)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import distributed
from ..checkpoint import load_model_weights, output_folder, write_json
from ..config import Config, DataConfig
from ..data.coco import move_batch
from ..data.loaders import build_datasets, make_loader, resolve_data
from ..data.panoptic import PanopticReport
from ..data.transforms import val_short_side
from ..loss.criterion import create_criterion
from ..loss_stats import RunningMeans, float_outputs, reduce_losses
from ..models.build import build_model
from ..postprocessing.boxes import postprocess
from ..presets import DEMO_DRAW_THRESHOLDS
from ..runtime import autocast, resolve_device
from ..validation import validate_config
from ..weights.identify import config_from_checkpoint
from ..weights.loading import load_weights
from .coco_eval import STAT_NAMES, bbox_cocoeval, gather_detections, save_detections, to_coco_detections
from .diagnostics import write_diagnostics
from .segm_eval import MaskEvaluator

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: Iterable, coco_gt: Any, device: torch.device,
             amp: str = "none", progress: bool = True, panoptic: PanopticReport | None = None,
             out_dir: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Losses and COCO bbox AP on `loader`, with detections gathered from every process.

    Returns the stats (mean losses, "coco_eval_bbox": the 12 COCOeval numbers, "AP", "AP50",
    ..., "coco_summary": COCOeval's printed table and, on the main process, "per_class_ap": the
    `diagnostics.per_class_ap` records) and the detections in COCO results format. With `out_dir` the main
    process writes the per-class diagnostics to `out_dir`/eval (`diagnostics.write_diagnostics`; the confusion
    matrix at the head's drawing threshold, `DEMO_DRAW_THRESHOLDS`).
    A model with masks ("pred_masks") adds `MaskEvaluator.summarize`'s mask AP and, with `panoptic` (the
    validation set's ground truth), PQ; its panoptic predictions go to `out_dir`/panoptic_eval when given.
    """
    model.eval()
    criterion.eval()
    averages = RunningMeans()
    detections: list[dict[str, Any]] = []
    image_ids: list[int] = []
    masks: MaskEvaluator | None = None
    bar = tqdm(loader, desc="eval", dynamic_ncols=True, disable=None if progress and distributed.is_main_process() else True)
    for images, targets in bar:
        images, targets = move_batch(images, targets, device)
        with autocast(device, amp):
            outputs = float_outputs(model(images))
        losses = criterion(outputs, targets)
        stats, _ = reduce_losses(losses, criterion.weight_dict, stop=False)
        averages.update(stats)
        orig_sizes = torch.stack([torch.as_tensor(t["orig_size"], device=device) for t in targets])
        ids = [int(t["image_id"]) for t in targets]
        results = postprocess(outputs, orig_sizes, getattr(criterion, "class_loss", "softmax"))  # the head's
        detections += to_coco_detections(results, ids)
        image_ids += ids
        if "pred_masks" in outputs:
            masks = masks or MaskEvaluator(getattr(criterion, "class_loss", "softmax"), panoptic, out_dir)
            masks.update(outputs, targets, orig_sizes)
    bar.close()

    detections, image_ids = gather_detections(detections, image_ids)
    stats = averages.means()
    coco_stats, summary = [], ""
    if distributed.is_main_process():
        coco_eval, summary = bbox_cocoeval(coco_gt, detections, image_ids)
        coco_stats = [float(s) for s in coco_eval.stats]
        class_loss = getattr(criterion, "class_loss", "softmax")
        stats["per_class_ap"] = write_diagnostics(out_dir / "eval" if out_dir else None, coco_eval, detections,
                                                  DEMO_DRAW_THRESHOLDS.get(class_loss, 0.5))
    coco_stats = _broadcast(coco_stats)
    stats.update({"coco_eval_bbox": coco_stats, "coco_summary": summary, **dict(zip(STAT_NAMES, coco_stats))})
    if masks is not None:
        stats.update(masks.summarize(coco_gt, image_ids))
    return stats, detections


def _broadcast(values: list[float]) -> list[float]:
    """Rank 0's list on every process (COCOeval runs once, on rank 0)."""
    if not distributed.is_distributed():
        return values
    box = [values]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def write_eval_outputs(out_dir: Path | None, stats: dict[str, Any], detections: list[dict[str, Any]],
                       category_ids: list[int] | None = None) -> None:
    """Save the detections (COCO results format; with `category_ids`, --data's label -> category id mapping,
    in the dataset's own ids) and the 12 COCO numbers of the last evaluation."""
    if out_dir is None:
        return
    if category_ids is not None:
        detections = [{**d, "category_id": dataset_category(d["category_id"], category_ids)} for d in detections]
    save_detections(out_dir / "detections_val.json", detections)
    summary = {k: stats[k] for k in ("coco_eval_bbox", "AP", "AP50", "AP75", "coco_eval_masks", "mask_AP", "PQ_all",
                                     "PQ_th", "PQ_st") if k in stats}
    write_json(out_dir / "eval.json", summary, indent=1)


SIZE_FIELDS = ("scales", "max_size", "val_scale")  # DataConfig's image sizes


def dataset_category(label: int, category_ids: list[int] | None) -> int:
    """The dataset's category id of a label (--data's mapping; without one, or beyond it, the label itself)."""
    return category_ids[label] if category_ids is not None and 0 <= label < len(category_ids) else label


def _val_size(data: DataConfig) -> tuple[int, int]:
    """(short side, long-side cap) of validation images."""
    return val_short_side(data), data.max_size


def evaluate_checkpoint(cfg: Config, path: str, model: str | None = None, progress: bool = True,
                        sizes_from_checkpoint: Iterable[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Evaluate the model in `path` (a checkpoint file, a transformers folder, a published name or a hub id:
    `detr.weights.loading.resolve_weights`) on cfg's validation data (or the data the checkpoint was trained on).

    The architecture comes from the checkpoint (`detr.weights.identify.config_from_checkpoint`, with
    `model` and the ModelConfig `overrides` for what an official file cannot tell); cfg's model
    section is not used. The image size fields named in `sizes_from_checkpoint` ("scales", "max_size",
    "val_scale") come from the checkpoint, the others from cfg (None: all from the checkpoint when the data is the
    checkpoint's too, none on cfg's data); a warning names sizes that differ from the checkpoint's.
    Returns the evaluation stats (losses, "coco_eval_bbox" with the 12 COCOeval numbers, "AP", ...).
    """
    validate_config(cfg, training=False)
    ckpt, source = load_weights(path, progress)  # refuses anything that is not plain tensors and containers
    saved = config_from_checkpoint(ckpt, source, model=model, **overrides)
    data_cfg = cfg.data
    ours = isinstance(ckpt.get("config"), dict) and bool(ckpt["config"].get("model"))
    if ours:
        own_data = not (data_cfg.data or data_cfg.coco_path or data_cfg.val_annotations)  # the checkpoint's data
        if sizes_from_checkpoint is None:
            sizes_from_checkpoint = SIZE_FIELDS if own_data else ()
        sizes = {k: getattr(saved.data if k in sizes_from_checkpoint else data_cfg, k) for k in SIZE_FIELDS}
        data_cfg = dataclasses.replace(saved.data if own_data else data_cfg, **sizes)
        if _val_size(data_cfg) != _val_size(saved.data):
            log.warning("%s was validated at --val_scale %d --max_size %d; evaluating at %d / %d (give those flags "
                        "to match)", path, *_val_size(saved.data), *_val_size(data_cfg))
    # --data: the checkpoint's label -> category id mapping numbers the new folder's classes as in training
    mapping = saved.data.category_ids if data_cfg.data else data_cfg.category_ids
    cfg = dataclasses.replace(cfg, model=saved.model, data=dataclasses.replace(data_cfg, class_names=None,
                                                                               category_ids=mapping))
    device = resolve_device(cfg.train.device, "--device")
    started = distributed.init_from_env(device)
    try:
        cfg = resolve_data(cfg, data_subdir="eval_data")  # --data: not over the training's data/ files
        if not cfg.data.val_annotations:
            raise ValueError("no validation data: give --val_images and --val_annotations (or --coco_path)")
        data = build_datasets(cfg, with_train=False)
        net = build_model(cfg.model).to(device)
        load_model_weights(net, ckpt["model"], source=source)
        criterion = create_criterion(cfg.model.num_classes, cfg.model.dec_layers, cfg.model.aux_loss,
                                     cfg.model.class_loss, cfg.model.dn_number > 0, cfg.model.masks,
                                     **vars(cfg.loss)).to(device)
        loader = make_loader(data.val, cfg.train.batch_size, False, cfg.train.seed, cfg.train.num_workers)
        main = distributed.is_main_process()
        out_dir = output_folder(cfg.train.output_dir, "--output_dir") if cfg.train.output_dir and main else None
        stats, detections = evaluate(net, criterion, loader, data.coco_gt, device, cfg.train.amp, progress,
                                     data.panoptic, out_dir)
        write_eval_outputs(out_dir, stats, detections, cfg.data.category_ids)
        if distributed.is_main_process():
            log.info("%s on %s (%d images):\n%s", path, cfg.data.val_annotations, len(data.val), eval_summary(stats))
            if out_dir:
                log.info("detections (COCO results format) in %s; per-class AP, precision-recall curves and the "
                         "confusion matrix in %s", out_dir / "detections_val.json", out_dir / "eval")
        return stats
    finally:
        if started:
            distributed.cleanup()


def eval_summary(stats: dict[str, Any]) -> str:
    """COCOeval's bbox table, with the mask AP and the panoptic quality table when they were measured."""
    lines = [stats.get("coco_summary", "")]
    if "mask_AP" in stats:
        lines.append(f"mask AP {stats['mask_AP']:.3f}  AP50 {stats['coco_eval_masks'][1]:.3f}  "
                     f"AP75 {stats['coco_eval_masks'][2]:.3f}")
    if "panoptic_summary" in stats:
        lines.append(stats["panoptic_summary"])
    return "\n".join(lines)
