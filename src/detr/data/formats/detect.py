"""Which layout a `--data` folder has, and its reader."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ...config import DATA_FORMATS
from ..errors import DatasetError
from .coco import ROBOFLOW_FILE, read_coco2017, read_roboflow
from .records import DatasetRecords
from .voc import read_voc
from .yolo import find_yaml, read_yolo

log = logging.getLogger(__name__)

READERS: dict[str, Callable[[Path], DatasetRecords]] = {
    "coco": read_coco2017, "roboflow": read_roboflow, "yolo": read_yolo, "voc": read_voc,
}
LAYOUTS = {
    "coco": "annotations/instances_{train,val}2017.json, train2017/, val2017/",
    "roboflow": f"train/{ROBOFLOW_FILE}, valid/{ROBOFLOW_FILE}",
    "yolo": "data.yaml with images/ and labels/",
    "voc": "Annotations/*.xml, JPEGImages/, ImageSets/Main/{train,val}.txt",
}


def _signs(root: Path) -> dict[str, bool]:
    """Whether each layout's marker is present (a marker, not the whole layout: the reader checks the rest)."""
    return {
        "coco": (root / "annotations").is_dir() and any((root / "annotations").glob("instances_*2017.json")),
        "roboflow": any((root / d / ROBOFLOW_FILE).is_file() for d in ("train", "valid", "test")),
        "yolo": find_yaml(root) is not None,
        "voc": (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir(),
    }


def detect_format(root: str | Path) -> str:
    """The layout of `root`: one of DATA_FORMATS; logs which was found.

    Raises:
        DatasetError: no folder, no known layout, or several (then `--data_format` chooses).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root}: folder not found")
    found = [name for name, present in _signs(root).items() if present]
    if not found:
        layouts = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
        raise DatasetError(f"--data {root}: no known dataset layout found (looked for {layouts})")
    if len(found) > 1:
        raise DatasetError(f"--data {root}: looks like several layouts ({', '.join(found)}); choose one with "
                           "--data_format")
    log.info("--data %s: %s layout (%s)", root, found[0], LAYOUTS[found[0]])
    return found[0]


def read_dataset(root: str | Path, data_format: str | None = None) -> DatasetRecords:
    """Read `root` in `data_format` (None: detected) as COCO records."""
    root = Path(root)
    if data_format is None:
        data_format = detect_format(root)
    elif data_format not in READERS:
        raise ValueError(f"--data_format must be one of {', '.join(DATA_FORMATS)}, got {data_format!r}")
    elif not root.is_dir():
        raise DatasetError(f"--data {root}: folder not found")
    else:
        log.info("--data %s: read as %s (--data_format)", root, data_format)
    return READERS[data_format](root)
