"""`--data DIR`: COCO 2017, Roboflow COCO, YOLO and Pascal VOC folders turned into COCO JSON files.

Each layout is read into COCO records (`read_dataset`), its categories are numbered 0..K-1 in the order of
their own ids (`category_ids[label]` is the dataset's id, kept in the checkpoint), and each split is written
as a COCO JSON file that the up-front scan (data/scan.py) then checks like any other.
Our own readers, not supervision's DetectionDataset: they name the file and line of each problem and read
image headers only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...checkpoint import output_folder, write_json
from ..errors import DatasetError
from .detect import DATA_FORMATS, detect_format, read_dataset
from .records import DatasetRecords, SplitRecords
from .report import Geometry, log_classes, log_pitfalls

log = logging.getLogger(__name__)

__all__ = ["DATA_FORMATS", "Geometry", "PreparedData", "detect_format", "prepare_data", "read_dataset"]


@dataclass
class PreparedData:
    """The written COCO files of a `--data` folder and its class mapping."""

    format: str
    paths: dict[str, str]  # train_images, train_annotations, val_images, val_annotations
    category_ids: list[int]  # label i <-> the dataset's category id category_ids[i]
    class_names: list[str]


def prepare_data(root: str | Path, out_dir: str | Path, data_format: str | None = None,
                 category_ids: Sequence[int] | None = None, geometry: Geometry | None = None) -> PreparedData:
    """Read `root`, number its classes contiguously, write `out_dir`/{train,val}.json and log the class table
    (and with `geometry` DETR's pitfalls).

    Args:
        root: the dataset folder.
        out_dir: where the COCO JSON files go (created).
        data_format: one of DATA_FORMATS; None detects it.
        category_ids: an existing mapping (a checkpoint's); None: the dataset's ids, sorted.

    Raises:
        DatasetError: an unknown layout, a format-level problem (named by file), or categories that the
            given mapping does not have.
    """
    records = read_dataset(root, data_format)
    ids = sorted(records.categories) if category_ids is None else list(category_ids)
    _check_mapping(records, ids, category_ids is not None)
    names = [records.categories.get(cid, f"class_{cid}") for cid in ids]
    label = {cid: i for i, cid in enumerate(ids)}
    folder = output_folder(out_dir, "--output_dir")
    written: dict[str, dict[str, Any]] = {}
    paths: dict[str, str] = {}
    for split, records_split in records.splits.items():
        written[split] = _coco(records_split, ids, names, label)
        path = folder / f"{split}.json"
        write_json(path, written[split])
        paths[f"{split}_images"] = str(records_split.images_root)
        paths[f"{split}_annotations"] = str(path)
    source = f"--data {root}"
    log_classes(source, ids, names, written["train"], written.get("val"))
    if geometry is not None:
        log_pitfalls(source, written["train"], geometry)
    return PreparedData(records.format, paths, ids, names)


def _check_mapping(records: DatasetRecords, ids: list[int], given: bool) -> None:
    used = {a.get("category_id") for s in records.splits.values() for a in s.annotations if isinstance(a, dict)}
    unknown = sorted(c for c in used & set(records.categories) if c not in ids)
    if unknown:
        raise DatasetError(f"--data {records.root}: category id(s) {unknown[:10]} are not among the model's "
                           f"{ids[:20]}" + (" (the checkpoint's classes)" if given else ""))
    if not ids:
        raise DatasetError(f"--data {records.root}: no categories found")


def _coco(split: SplitRecords, ids: list[int], names: list[str], label: dict[int, int]) -> dict[str, Any]:
    """The split as a COCO dict with labels 0..K-1 as category ids (each category keeps its `dataset_id`)."""
    anns = []
    for a in split.annotations:
        if isinstance(a, dict) and isinstance(a.get("category_id"), int) and a["category_id"] in label:
            a = {**a, "category_id": label[a["category_id"]]}
        anns.append(a)  # anything else goes to the scan as it is, which names it
    cats = [{"id": i, "name": n, "dataset_id": cid} for i, (cid, n) in enumerate(zip(ids, names))]
    return {"images": split.images, "annotations": anns, "categories": cats}
