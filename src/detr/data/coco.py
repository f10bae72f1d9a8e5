"""COCO-format detection dataset: an image folder + an instances JSON, checked up front."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .errors import DatasetError
from .images import load_image
from .masks import segmentation_to_mask
from .scan import ImageRecord, ScanReport, scan_dataset
from .transforms import make_transforms

Target = dict[str, Any]


class CocoDetection(Dataset):
    """Images and DETR targets of the usable images of a scanned COCO-format dataset.

    `dataset[i]` is `(image, target)`: image [3, H, W] float normalised; target "boxes" [N, 4]
    cxcywh in [0, 1] of the transformed image, "labels" [N] int64 (category ids), "image_id" int,
    "orig_size" [2] and "size" [2] as (h, w) before/after transforms, "area" [N], "iscrowd" [N];
    "masks" [N, H, W] bool when the report was scanned with `masks=True`.

    Args:
        report: the result of `scan_dataset` (only images that decoded there are used).
        transforms: `(image, target) -> (image, target)`; default: the validation pipeline.
    """

    def __init__(self, report: ScanReport, transforms: Callable[..., Any] | None = None):
        self.report = report
        self.ids = list(report.image_ids)
        self.transforms = transforms if transforms is not None else make_transforms(train=False)
        self.num_classes = report.num_classes
        self.class_names = report.class_names
        self._coco: Any = None

    @property
    def coco(self) -> Any:
        """pycocotools COCO over the usable images (ground truth for COCOeval), built on first use."""
        if self._coco is None:
            self._coco = self.report.coco()
        return self._coco

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = self.ids[index]
        rec = self.report.records[image_id]
        image = load_image(rec.file, apply_exif=rec.apply_exif)
        if image.size != (rec.width, rec.height):
            raise DatasetError(f"{rec.file}: image is {image.width}x{image.height} now but was "
                               f"{rec.width}x{rec.height} when the dataset was scanned (file changed?)")
        image, target = self.transforms(image, self._target(rec))
        target["image_id"] = image_id
        target["orig_size"] = torch.tensor([rec.height, rec.width])
        return image, target

    def _target(self, rec: ImageRecord) -> Target:
        """The target of one image before transforms (boxes in pixels, masks at the image size)."""
        t = rec.target
        target: Target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(t["boxes"]), format="XYXY",
                                              canvas_size=(rec.height, rec.width)),  # [N, 4] pixels
            "labels": torch.from_numpy(t["labels"]),
            "area": torch.from_numpy(t["area"]),
            "iscrowd": torch.from_numpy(t["iscrowd"]),
        }
        if "segmentation" in t:  # scanned with masks=True
            masks = [segmentation_to_mask(s, rec.height, rec.width) for s in t["segmentation"]]
            target["masks"] = tv_tensors.Mask(torch.from_numpy(
                np.stack(masks) if masks else np.zeros((0, rec.height, rec.width), dtype=bool)))  # [N, H, W]
        return target


def build_dataset(images_dir: str | Path, ann_file: str | Path, train: bool,
                  transforms: Callable[..., Any] | None = None,
                  num_classes: int | None = None, decode: bool = True, masks: bool = False) -> CocoDetection:
    """Scan the dataset (one warning if anything was skipped) and wrap it for training or eval.

    Args:
        transforms: default `make_transforms(train)` (the official recipe).
        num_classes: labels must be < num_classes; None derives max category id + 1.
        decode: decode every image in the scan (see `scan_dataset`); False trusts the headers.
        masks: targets also hold the instance masks ("masks" [N, H, W]) from polygons or RLE.

    A training dataset (`train=True`) keeps no COCO ground truth (`.coco`), to save memory.

    Raises:
        DatasetError: the dataset cannot be used; the message names the file and the problem.
    """
    report = scan_dataset(images_dir, ann_file, num_classes=num_classes, keep_coco=not train, decode=decode,
                          masks=masks)
    report.warn()
    return CocoDetection(report, transforms if transforms is not None else make_transforms(train))


def coco_paths(coco_path: str | Path) -> tuple[Path, Path, Path, Path]:
    """(train_images, train_ann, val_images, val_ann) of the COCO 2017 layout under `coco_path`.

    Raises:
        DatasetError: `coco_path` or one of its four parts is missing (all missing parts named).
    """
    root = Path(coco_path)
    if not root.is_dir():
        raise DatasetError(f"--coco_path {root}: folder not found")
    parts = (root / "train2017", root / "annotations" / "instances_train2017.json",
             root / "val2017", root / "annotations" / "instances_val2017.json")
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise DatasetError(f"--coco_path {root}: not a COCO 2017 folder; missing: {', '.join(missing)} "
                           "(expected train2017/, val2017/, annotations/instances_{train,val}2017.json)")
    return parts


def collate_fn(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Batch as lists (the model pads images of different sizes itself, with a mask)."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def move_batch(images: list[Tensor], targets: list[Target], device: torch.device) -> tuple[list[Tensor], list[Target]]:
    """A batch from `collate_fn` with its images and every target tensor on `device`."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
    return images, targets


def coco_results(image_id: int, boxes: Tensor, scores: Tensor, labels: Tensor) -> list[dict[str, Any]]:
    """Detections in the COCO results format: `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`.

    `boxes` [N, 4] are (x0, y0, x1, y1) pixels; the label is the category id. Boxes are rounded to
    1/100 pixel and scores to 5 decimals, the same for every writer (`detr eval`, `detr predict`).
    """
    xyxy = boxes.detach().float().cpu()
    xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1).tolist()  # [N, 4]
    return [{"image_id": int(image_id), "category_id": int(c), "bbox": [round(v, 2) for v in b],
             "score": round(s, 5)}
            for b, s, c in zip(xywh, scores.detach().float().cpu().tolist(), labels.detach().cpu().tolist())]
