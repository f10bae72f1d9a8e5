"""COCO-format layouts: a COCO 2017 folder and a Roboflow COCO export.

COCO 2017: `annotations/instances_{train,val}2017.json` with `train2017/` and `val2017/`.
Roboflow: `train/`, `valid/` (and `test/`, not used) each holding `_annotations.coco.json` and its images;
Roboflow's super-category (id 0, no boxes, the `supercategory` of the others) is dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..annotations import category_names, read_json
from .records import DatasetRecords, FormatProblems, SplitRecords

log = logging.getLogger(__name__)

ROBOFLOW_FILE = "_annotations.coco.json"
ROBOFLOW_SPLITS = {"train": "train", "val": "valid"}


def coco2017_files(root: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (annotation file, image folder) of a COCO 2017 folder."""
    return {split: (root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017")
            for split in ("train", "val")}


def roboflow_files(root: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (annotation file, image folder) of a Roboflow COCO export."""
    return {split: (root / folder / ROBOFLOW_FILE, root / folder) for split, folder in ROBOFLOW_SPLITS.items()}


def read_coco2017(root: Path) -> DatasetRecords:
    """Read a COCO 2017 folder (a missing split file or image folder is an error naming it)."""
    return _read("coco", root, coco2017_files(root))


def read_roboflow(root: Path) -> DatasetRecords:
    """Read a Roboflow COCO export, dropping its super-category (logged)."""
    records = _read("roboflow", root, roboflow_files(root))
    _drop_supercategory(records)
    return records


def _read(fmt: str, root: Path, files: dict[str, tuple[Path, Path]]) -> DatasetRecords:
    problems = FormatProblems(root)
    splits: dict[str, SplitRecords] = {}
    categories: dict[int, str] = {}
    parents: dict[int, Any] = {}
    for split, (ann_file, folder) in files.items():
        if not ann_file.is_file():
            problems.add("missing split", f"{split}: {ann_file} not found")
            continue
        if not folder.is_dir():
            problems.add("missing split", f"{split}: image folder {folder} not found")
            continue
        data = read_json(ann_file)  # DatasetError naming the file when it is not COCO JSON
        names = category_names(data)
        parents.update({c["id"]: c.get("supercategory") for c in data.get("categories", [])
                        if isinstance(c, dict) and c.get("id") in names})
        for cid, name in names.items():
            if categories.setdefault(cid, name) != name:
                problems.add("category differs between splits", f"{ann_file}: id {cid} is {name!r}, "
                             f"{categories[cid]!r} in another split")
        splits[split] = SplitRecords(folder, ann_file, list(data["images"]), list(data["annotations"]))
        _unlisted(splits[split], categories, problems)
    problems.finish(fmt)
    return DatasetRecords(fmt, root, categories, splits, parents)


def _unlisted(split: SplitRecords, categories: dict[int, str], problems: FormatProblems) -> None:
    """Category ids used by annotations but not in 'categories' get a name `class_<id>` (warned)."""
    for ann in split.annotations:
        cid = ann.get("category_id") if isinstance(ann, dict) else None
        if isinstance(cid, int) and not isinstance(cid, bool) and cid >= 0 and cid not in categories:
            categories[cid] = f"class_{cid}"
            problems.add("category id not in 'categories' (named class_<id>)", f"{split.source}: {cid}",
                         fatal=False)


def _drop_supercategory(records: DatasetRecords) -> None:
    """Drop Roboflow's super-category: a category with no box whose name is the `supercategory` of the others."""
    used = {a.get("category_id") for s in records.splits.values() for a in s.annotations if isinstance(a, dict)}
    parents = records.supercategories
    for cid, name in sorted(records.categories.items()):
        others = [parents.get(c) for c in records.categories if c != cid]
        if cid not in used and others and all(p == name for p in others):
            del records.categories[cid]
            log.info("--data %s: category %d %r has no boxes and is the super-category of the others (Roboflow's "
                     "dataset name): dropped", records.root, cid, name)
            return

