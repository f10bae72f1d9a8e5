"""What every reader returns: COCO records per split, and the problems it found, named by file.

A reader turns its layout into `DatasetRecords`: per split the images (file names relative to an
images root, sizes in displayed pixels) and annotations (COCO xywh pixels, the dataset's own
category ids). `FormatProblems` collects format-level problems; fatal ones end in one DatasetError.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..images import displayed_size, probe_image

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
MAX_EXAMPLES = 5


@dataclass
class SplitRecords:
    """One split as COCO records: `file_name`s are relative to `images_root`."""

    images_root: Path
    source: Path  # the file or folder the split was read from (named in messages)
    images: list[dict[str, Any]] = field(default_factory=list)  # id, file_name, width, height
    annotations: list[dict[str, Any]] = field(default_factory=list)  # id, image_id, category_id, bbox, area, iscrowd

    def add_image(self, file_name: str, width: int, height: int) -> int:
        """Append an image entry; returns its id (1, 2, ...)."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        return image_id

    def add_box(self, image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0) -> None:
        """Append an annotation; `bbox` is COCO [x, y, w, h] in pixels."""
        self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, "category_id": category_id,
                                 "bbox": [float(v) for v in bbox], "area": float(bbox[2] * bbox[3]),
                                 "iscrowd": int(iscrowd)})


@dataclass
class DatasetRecords:
    """A dataset read from one folder: its format, categories (own id -> name) and splits."""

    format: str
    root: Path
    categories: dict[int, str]
    splits: dict[str, SplitRecords]
    supercategories: dict[int, Any] = field(default_factory=dict)  # COCO formats: id -> 'supercategory'


@dataclass
class FormatProblems:
    """Format-level problems: kind -> (count, first examples). Fatal kinds raise, the others warn."""

    root: Path
    fatal: dict[str, list[Any]] = field(default_factory=dict)
    dropped: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, kind: str, example: str, fatal: bool = True) -> None:
        """Count one problem of `kind`; `example` names the file (and line or object)."""
        entry = (self.fatal if fatal else self.dropped).setdefault(kind, [0, []])
        entry[0] += 1
        if len(entry[1]) < MAX_EXAMPLES:
            entry[1].append(example)

    def finish(self, fmt: str) -> None:
        """Warn about what was dropped; raise one DatasetError listing every fatal problem."""
        if self.dropped:
            log.warning("%s (%s): %s", self.root, fmt, _lines(self.dropped, "dropped"))
        if self.fatal:
            raise DatasetError(f"--data {self.root} ({fmt}): cannot train on this dataset:\n"
                               + _lines(self.fatal, "error"))


def _lines(kinds: dict[str, list[Any]], action: str) -> str:
    return "\n".join(f"  {action} {count:>5}  {kind} (e.g. {'; '.join(examples)})"
                     for kind, (count, examples) in kinds.items())


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image as displayed (EXIF orientation applied), from its header; None if unreadable
    (the scan names it)."""
    try:
        return displayed_size(probe_image(path, decode=False), True)
    except (DatasetError, OSError):
        return None


def relative_names(paths: list[Path]) -> tuple[Path, list[str]]:
    """The deepest folder holding all `paths`, and each path relative to it (POSIX)."""
    if not paths:
        return Path("."), []
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return root, [p.resolve().relative_to(root).as_posix() for p in paths]
