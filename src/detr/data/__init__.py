"""Data: COCO-format datasets checked up front, the official augmentations, the demo dataset.

    paths = make_demo_dataset(Path("data/demo"))
    train = build_dataset(paths["train_images"], paths["train_annotations"], train=True,
                          transforms=demo_transforms(train=True))
    loader = DataLoader(train, batch_size=2, collate_fn=collate_fn)
"""

from .annotations import class_names_from_annotations, num_classes_from_annotations
from .coco import CocoDetection, build_dataset, coco_paths, collate_fn
from .coco_names import COCO_CLASSES
from .demo import DEMO_CLASSES, DEMO_NUM_CLASSES, demo_transforms, make_demo_dataset
from .errors import DatasetError
from .images import load_image
from .scan import ScanReport, scan_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, make_transforms, preprocess

__all__ = [
    "COCO_CLASSES",
    "DEMO_CLASSES",
    "DEMO_NUM_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CocoDetection",
    "DatasetError",
    "ScanReport",
    "build_dataset",
    "class_names_from_annotations",
    "coco_paths",
    "collate_fn",
    "demo_transforms",
    "load_image",
    "make_demo_dataset",
    "make_transforms",
    "num_classes_from_annotations",
    "preprocess",
    "scan_dataset",
]
