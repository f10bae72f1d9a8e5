"""`detr.train`: training from Python with the options of `detr train`.

    result = detr.train(data="datasets/pets", epochs=20, output_dir="runs/pets")
    detector = detr.Detector.from_pretrained(result.best_checkpoint)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from .options import NEGATED, config_from_options
from .train import train as train_config

log = logging.getLogger(__name__)

DATA_OPTIONS = ("data", "coco_path", "train_annotations", "val_annotations")


@dataclass
class TrainResult:
    """What a run left: its checkpoints (None when not written) and one metrics dict per evaluation."""

    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)  # log.txt's test_* values with their epoch
    summary: dict[str, Any] = field(default_factory=dict)
    config: Config | None = None


def train(data: str | Path | None = None, weights: str | None = None, epochs: int | None = None,
          output_dir: str | Path = "runs/train", progress: bool = False, **options: Any) -> TrainResult:
    """Train as `detr train` does with the same options (flag names: `lr=2e-4`, `model="detr_r50"`,
    `data_format="yolo"`, `no_random_crop=True`, ...); None leaves an option at its default.

    With `data` (a COCO 2017, Roboflow, YOLO or VOC folder) the run fine-tunes detr_r50 (presets/finetune.py;
    `weights="none"`: the backbone's weights alone). With no data it refuses, as `detr train` does.

    Raises:
        ValueError: no data, an unknown option, a value of the wrong type, or one `detr train` refuses (same
            messages).
    """
    given = {k: v for k, v in options.items() if v is not None}
    for name, value in (("data", data), ("weights", weights), ("epochs", epochs), ("output_dir", output_dir)):
        if value is not None:
            given[name] = str(value) if isinstance(value, Path) else value
    _check_types(given)
    if not any(given.get(k) for k in DATA_OPTIONS):
        raise ValueError("no data: give data=DIR (COCO 2017, Roboflow, YOLO or VOC), coco_path=DIR, or "
                         "train_images/train_annotations and val_images/val_annotations; to try DETR on the "
                         "built-in demo dataset, run `detr demo`")
    cfg = config_from_options(given)
    summary = train_config(cfg, progress=progress)
    return _result(cfg, summary)


def _check_types(given: dict[str, Any]) -> None:
    """The type checks argparse makes for the flags: ints, numbers, strings and switches."""
    defaults = {f.name: f.default for part in dataclasses.fields(Config)
                for f in dataclasses.fields(part.default_factory())}  # type: ignore[misc]
    for name, value in given.items():
        if name in NEGATED or name == "model":
            expected: Any = bool if name in NEGATED else str
        elif name == "scales":
            if not (isinstance(value, (list, tuple)) and all(_is(v, int) for v in value)):
                raise ValueError(f"scales: expected a list of ints, got {value!r}")
            continue
        else:
            default = defaults.get(name)
            expected = type(default) if default is not None else None
        if expected is not None and not _is(value, expected):
            raise ValueError(f"{name}: expected {expected.__name__}, got {value!r}")


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _result(cfg: Config, summary: dict[str, Any]) -> TrainResult:
    out = Path(cfg.train.output_dir) if cfg.train.output_dir else None
    if out is None:
        return TrainResult(Path(), None, None, [], summary, cfg)
    metrics = []
    log_file = out / "log.txt"
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            record = json.loads(line)
            test = {k.removeprefix("test_"): v for k, v in record.items() if k.startswith("test_")}
            if test:
                metrics.append({"epoch": record["epoch"], **test})
    best, last = out / "best.pth", out / "checkpoint.pth"
    return TrainResult(out, best if best.is_file() else None, last if last.is_file() else None, metrics, summary,
                       cfg)
