"""From a `Config` to data: concrete paths and class count, scanned datasets, and their loaders."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..config import Config, DataConfig
from .annotations import class_names_from_annotations, num_classes_from_annotations
from .coco import CocoDetection, build_dataset, coco_paths, collate_fn
from .demo import make_demo_dataset
from .errors import DatasetError
from .formats import Geometry, PreparedData, prepare_data
from .mosaic import MosaicMixup
from .panoptic import CocoPanoptic, PanopticReport, build_panoptic_dataset, coco_panoptic_paths
from .sampler import EpochBatchSampler
from .transforms import SCALES, make_transforms

log = logging.getLogger(__name__)

DEMO_DATA_DIR = "runs/demo/data"


@dataclass
class RunData:
    """The datasets of a run; `coco_gt` is the pycocotools COCO of the validation set, `panoptic` its panoptic
    report (ground truth for PQ) when the validation data is panoptic."""

    train: Dataset | None
    val: Dataset | None
    coco_gt: Any
    panoptic: PanopticReport | None = None


def resolve_data(cfg: Config, demo_root: str | None = None, data_subdir: str = "data") -> Config:
    """A copy of `cfg` with concrete data paths, num_classes and class names.

    --coco_path gives the COCO 2017 layout and 91 classes (with --coco_panoptic_path: the panoptic layout
    and 250 classes, as the official code); custom data gives num_classes = largest category id + 1 unless
    set; with no data at all the demo dataset is generated (by the main process only) under `demo_root`.
    --data DIR is written as COCO files under the output folder's `data_subdir` (`prepare_folder`), with
    labels 0..K-1 and `category_ids` mapping them to the dataset's ids.
    """
    d = cfg.data
    if d.data and not (d.train_annotations or d.val_annotations):
        d = prepare_folder(cfg, data_subdir)
    if d.coco_path and d.coco_panoptic_path:
        d = dataclasses.replace(d, **{k: str(v) for k, v in coco_panoptic_paths(d.coco_path, d.coco_panoptic_path)
                                      .items()})
    elif d.coco_path:
        keys = ("train_images", "train_annotations", "val_images", "val_annotations")
        d = dataclasses.replace(d, **{k: str(v) for k, v in zip(keys, coco_paths(d.coco_path))})
    elif not d.train_annotations and not d.val_annotations:
        paths = _demo_paths(demo_root or _default_demo_root(cfg))
        d = dataclasses.replace(d, **{k: str(v) for k, v in paths.items() if hasattr(d, k)})
    ann_files = [a for a in (d.train_annotations, d.val_annotations) if a]
    needed = max(num_classes_from_annotations(a) for a in ann_files)
    num_classes = cfg.model.num_classes
    if num_classes is None:
        num_classes = (250 if d.coco_panoptic_path else 91) if d.coco_path else needed
    elif num_classes < needed:
        raise ValueError(f"--num_classes {num_classes} is too small: the annotations use category id "
                         f"{needed - 1}, so num_classes must be >= {needed}")
    if d.class_names is None:
        d = dataclasses.replace(d, class_names=class_names_from_annotations(ann_files[0]))
    model = dataclasses.replace(cfg.model, num_classes=num_classes)
    return dataclasses.replace(cfg, data=d, model=model)


def prepare_folder(cfg: Config, data_subdir: str = "data") -> DataConfig:
    """cfg.data with the COCO files written from --data into the output folder's `data_subdir` (by the main
    process; the others reuse them)."""
    d, m = cfg.data, cfg.model
    out = Path(cfg.train.output_dir or "runs/train") / data_subdir
    geometry = Geometry(m.num_queries, 16 if m.backbone == "tiny" or m.dilation else 32, d.scales or SCALES,
                        d.max_size)
    made = None
    if distributed.is_main_process():
        made = prepare_data(d.data, out, d.data_format, d.category_ids, geometry)
    box: list[PreparedData | None] = [made]
    if distributed.is_distributed():
        torch.distributed.broadcast_object_list(box, src=0)
    prepared = box[0]
    assert prepared is not None
    return dataclasses.replace(d, **prepared.paths, data_format=prepared.format, category_ids=prepared.category_ids,
                               class_names=prepared.class_names)


def _default_demo_root(cfg: Config) -> str:
    return str(Path(cfg.train.output_dir) / "data") if cfg.train.output_dir else DEMO_DATA_DIR


def _demo_paths(root: str) -> dict[str, Any]:
    """Generate the demo dataset on the main process; the others wait and reuse it."""
    made = make_demo_dataset(root) if distributed.is_main_process() else None
    box = [{k: str(v) for k, v in made.items()} if made is not None else None]
    if distributed.is_distributed():
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _transforms(cfg: Config, train: bool) -> Any:
    d = cfg.data
    if d.scales is None:
        return make_transforms(train, max_size=d.max_size, val_scale=d.val_scale)
    top = max(d.scales)
    # The paper's crop branch scaled to these image sizes (official: 400/500/600, crop 384..600 for 800).
    crop = (tuple(round(s * top / 800) for s in (400, 500, 600)), round(384 * top / 800), round(600 * top / 800))
    return make_transforms(train, scales=d.scales, max_size=d.max_size, crop=crop if d.random_crop else None,
                           val_scale=d.val_scale)


def _dataset(cfg: Config, train: bool) -> CocoDetection:
    """One split: panoptic when it has a PNG folder, else instances (with their masks when the model has masks)."""
    d, n, split = cfg.data, cfg.model.num_classes, "train" if train else "val"
    images, ann, png = getattr(d, f"{split}_images"), getattr(d, f"{split}_annotations"), getattr(d, f"{split}_panoptic")
    if png:
        return build_panoptic_dataset(images, ann, png, train, _transforms(cfg, train), n)
    dataset = build_dataset(images, ann, train, _transforms(cfg, train), n, masks=cfg.model.masks)
    if cfg.model.masks and not any(len(r.target["labels"]) for r in dataset.report.records.values()):
        flag = "--coco_path" if d.coco_path else f"--{split}_annotations"
        raise DatasetError(f"{flag} {ann}: --masks needs instance masks, and no annotation has a usable "
                           "'segmentation' (polygons or RLE); give panoptic data (--dataset_file coco_panoptic, or "
                           f"--{split}_panoptic PNGs with a panoptic JSON) or drop --masks")
    return dataset


def build_datasets(cfg: Config, with_train: bool = True) -> RunData:
    """Scan and wrap the train and (if given) val datasets; labels are checked against num_classes.

    With --masks the targets carry "masks" [N, H, W]: the PNG segments of panoptic data, else the instance
    masks of the annotations' polygons or RLE (DatasetError when no annotation has one).
    """
    d = cfg.data
    train = val = coco_gt = None
    if with_train:
        if not d.train_annotations:
            raise ValueError("no training data: give --train_images and --train_annotations (or --coco_path)")
        train = _dataset(cfg, True)
        most = max((len(r.target["labels"]) for r in train.report.records.values()), default=0)
        if most > cfg.model.num_queries and distributed.is_main_process() and not d.data:  # --data: said before
            log.warning("--num_queries %d is smaller than the %d objects of the most crowded image in %s; at most "
                        "%d objects per image can be detected", cfg.model.num_queries, most, d.train_annotations,
                        cfg.model.num_queries)
        if d.mosaic_prob > 0 or d.mixup_prob > 0:
            train = MosaicMixup(train, d.mosaic_prob, d.mixup_prob)
    if d.val_annotations:
        val = _dataset(cfg, False)
        coco_gt = val.coco
    panoptic = val.report if isinstance(val, CocoPanoptic) else None
    return RunData(train, val, coco_gt, panoptic)


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int, num_workers: int,
                generator: torch.Generator | None = None, steps_per_epoch: int | None = None,
                group_by_aspect: bool = False) -> DataLoader:
    """A DataLoader of this process's share, its batches from an `EpochBatchSampler` (exact resume);
    `steps_per_epoch` batches per epoch (None: one pass); `group_by_aspect` (training): batches of landscape
    or of portrait images (`aspect_groups`)."""
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=train, drop_last=train, seed=seed,
                                rank=distributed.rank(), world_size=distributed.world_size(),
                                steps_per_epoch=steps_per_epoch,
                                groups=aspect_groups(dataset) if group_by_aspect else None)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      generator=generator, persistent_workers=False)


def aspect_groups(dataset: Any) -> list[int]:
    """Per sample of a scanned dataset (`CocoDetection`, `CocoPanoptic`, or one wrapped as by `MosaicMixup`),
    1 for a portrait image (taller than wide), else 0: from the sizes the scan read, no image is opened."""
    records = dataset.report.records
    return [int(records[i].height > records[i].width) for i in dataset.ids]
