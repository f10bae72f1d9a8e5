"""Data: COCO-format datasets (instances, panoptic) checked up front, the official augmentations, the demo.

    paths = make_demo_dataset(Path("data/demo"))
    train = build_dataset(paths["train_images"], paths["train_annotations"], train=True,
                          transforms=make_transforms(train=True, scales=[96, 128], max_size=192))
    loader = DataLoader(train, batch_size=2, collate_fn=collate_fn)
"""

from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..panoptic_ids import id_to_rgb, rgb_to_id
from .annotations import class_names_from_annotations, num_classes_from_annotations
from .coco import CocoDetection, build_dataset, coco_paths, collate_fn
from .demo import DEMO_CLASSES, DEMO_NUM_CLASSES, make_demo_dataset
from .errors import DatasetError
from .images import load_image
from .masks import coco_mask_results, read_id_png, segmentation_to_mask, write_id_png
from .panoptic import (
    CocoPanoptic,
    PanopticReport,
    build_panoptic_dataset,
    coco_panoptic_paths,
    scan_panoptic,
)
from .scan import ScanReport, scan_dataset
from .transforms import make_transforms, preprocess

__all__ = [
    "DEMO_CLASSES",
    "DEMO_NUM_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CocoDetection",
    "CocoPanoptic",
    "DatasetError",
    "PanopticReport",
    "ScanReport",
    "build_dataset",
    "build_panoptic_dataset",
    "class_names_from_annotations",
    "coco_mask_results",
    "coco_panoptic_paths",
    "coco_paths",
    "collate_fn",
    "id_to_rgb",
    "load_image",
    "make_demo_dataset",
    "make_transforms",
    "num_classes_from_annotations",
    "preprocess",
    "read_id_png",
    "rgb_to_id",
    "scan_dataset",
    "scan_panoptic",
    "segmentation_to_mask",
    "write_id_png",
]
