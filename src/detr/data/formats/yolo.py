"""YOLO layout: `data.yaml` (`names`, `train`, `val`, optional `path`) with `images/` and `labels/`.

`train`/`val` are image folders, .txt files listing images, or lists of these, relative to `path` (itself
relative to the yaml's folder) or to the yaml's folder. An image's label file is its path with the last
`images` folder replaced by `labels` and the suffix by `.txt`: one `class cx cy w h` line per box, normalised
to [0, 1] (a polygon line `class x1 y1 x2 y2 ...` gives its bounding box); no label file: no boxes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .records import DatasetRecords, FormatProblems, SplitRecords, image_size, relative_names

log = logging.getLogger(__name__)

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".dng", ".mpo"}


def find_yaml(root: Path) -> Path | None:
    """The dataset yaml of `root` (data.yaml first), or None."""
    return next((root / n for n in YAML_NAMES if (root / n).is_file()), None)


def read_yolo(root: Path) -> DatasetRecords:
    """Read a YOLO dataset; class indices outside `names`, coordinates outside [0, 1], malformed lines and a
    missing split are errors naming the file (and line); zero-area boxes and label files without an image are
    dropped with a warning."""
    yaml_file = find_yaml(root)
    if yaml_file is None:
        raise DatasetError(f"--data {root}: no data.yaml (the YOLO dataset description)")
    spec = _load_yaml(yaml_file)
    names = _names(spec, yaml_file)
    problems = FormatProblems(root)
    base = _base(spec, yaml_file)
    splits: dict[str, SplitRecords] = {}
    for split in ("train", "val"):
        entry = spec.get(split)
        if not entry:
            problems.add("missing split", f"{yaml_file}: no '{split}' entry")
            continue
        images = _split_images(entry, base, yaml_file.parent, split, problems)
        if images is not None:
            splits[split] = _read_split(images, names, yaml_file, problems)
    problems.finish("yolo")
    return DatasetRecords("yolo", root, names, splits)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(spec, dict):
        raise DatasetError(f"{path}: expected a mapping with 'names', 'train' and 'val'")
    return spec


def _names(spec: dict[str, Any], path: Path) -> dict[int, str]:
    """class index -> name, from `names` as a list or a {index: name} mapping."""
    names = spec.get("names")
    if isinstance(names, list) and names:
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict) and names:
        try:
            return {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'names' keys must be class indices, got {list(names)[:5]}") from None
    raise DatasetError(f"{path}: 'names' must be a non-empty list or a mapping of class index -> name")


def _base(spec: dict[str, Any], yaml_file: Path) -> Path:
    """The folder that `train`/`val` are relative to: `path` (relative to the yaml's folder) or the yaml's."""
    path = spec.get("path")
    if not path:
        return yaml_file.parent
    p = Path(str(path)).expanduser()
    return p if p.is_absolute() else yaml_file.parent / p


def _resolve(item: str, base: Path, yaml_dir: Path) -> Path | None:
    """`item` relative to `base`, else to the yaml's folder. Roboflow's YOLO exports write `../train/images` for
    the `train/images` beside their data.yaml; as ultralytics does, a leading `../` that leads nowhere is
    dropped."""
    tries = [item, item[3:]] if item.startswith("../") else [item]
    for name in tries:
        for folder in (base, yaml_dir):
            candidate = Path(name).expanduser() if Path(name).is_absolute() else folder / name
            if candidate.exists():
                return candidate
    return None


def _split_images(entry: Any, base: Path, yaml_dir: Path, split: str,
                  problems: FormatProblems) -> list[Path] | None:
    """The images of one split (folders searched recursively, list files read), or None when missing."""
    found: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        path = _resolve(str(item), base, yaml_dir)
        if path is None:
            problems.add("missing split", f"{split}: {item} not found under {base}" +
                         (f" or {yaml_dir}" if base != yaml_dir else ""))
            return None
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            found += _list_file(path, base)
    return found


def _list_file(path: Path, base: Path) -> list[Path]:
    """Image paths listed one per line (relative ones: to the list's folder, else to `base`)."""
    images = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        p = Path(line)
        if not p.is_absolute():
            p = path.parent / line if (path.parent / line).exists() else base / line
        images.append(p)
    return images


def label_path(image: Path) -> Path:
    """The label file of an image: the last `images` folder replaced by `labels`, suffix `.txt`."""
    parts = list(image.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def _read_split(images: list[Path], names: dict[int, str], yaml_file: Path,
                problems: FormatProblems) -> SplitRecords:
    root, rel = relative_names(images)
    split = SplitRecords(root, yaml_file)
    for image, name in zip(images, rel):
        size = image_size(image)
        width, height = size if size is not None else (0, 0)  # unreadable: the scan names and skips it
        image_id = split.add_image(name, width, height)
        label = label_path(image)
        if label.is_file() and size is not None:
            for cls, box in _read_labels(label, names, problems):
                cx, cy, w, h = box
                split.add_box(image_id, cls, [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height])
    _orphan_labels(images, problems)
    return split


def _read_labels(label: Path, names: dict[int, str], problems: FormatProblems) -> list[tuple[int, list[float]]]:
    """(class, [cx, cy, w, h]) of each usable line of a label file; problems named by file and line."""
    boxes = []
    for n, line in enumerate(label.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{n}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.add("malformed label line (expected: class cx cy w h)", f"{where}: {line.strip()[:60]!r}")
            continue
        if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
            problems.add("malformed label line (expected: class cx cy w h)", f"{where}: {line.strip()[:60]!r}")
            continue
        cls = values[0]
        if cls != int(cls) or int(cls) not in names:
            problems.add(f"class index outside names (0..{max(names)})", f"{where}: class {fields[0]}")
            continue
        coords = values[1:]
        if any(not 0.0 <= v <= 1.0 for v in coords):
            problems.add("coordinates outside [0, 1] (YOLO labels are normalised)", f"{where}: {line.strip()[:60]!r}")
            continue
        if len(coords) > 4:  # a polygon: its bounding box
            xs, ys = coords[0::2], coords[1::2]
            coords = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        if coords[2] <= 0 or coords[3] <= 0:
            problems.add("box with zero area", f"{where}: {line.strip()[:60]!r}", fatal=False)
            continue
        boxes.append((int(cls), coords))
    return boxes


def _orphan_labels(images: list[Path], problems: FormatProblems) -> None:
    """Label files in the label folders of these images that belong to no image."""
    expected = {label_path(p).resolve() for p in images}
    for folder in {label_path(p).parent for p in images}:
        if not folder.is_dir():
            continue
        for label in sorted(folder.glob("*.txt")):
            if label.resolve() not in expected and label.name != "classes.txt":
                problems.add("label file without an image (ignored)", str(label), fatal=False)
