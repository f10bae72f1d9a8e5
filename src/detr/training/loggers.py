"""Experiment logging (`--logger tensorboard|wandb|mlflow`): training losses, learning rates, every val number,
per-class AP and a picture of predictions, to each chosen backend.

Each backend is an optional extra, imported only when chosen; `check_loggers` runs before training so that a
missing package is named up front. During training a backend that fails (disk full, server gone) warns once and
is dropped: logging never stops or changes training, and log.txt stays the record. Only the main process logs.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config import Config
from ..data.images import load_image
from ..data.transforms import val_short_side
from ..inference.detector import Detector
from ..inference.visualize import draw_detections, draw_masks, side_by_side
from ..presets import DEMO_DRAW_THRESHOLDS

log = logging.getLogger(__name__)

# The module each backend needs (torch's SummaryWriter needs the tensorboard package).
MODULES: dict[str, str] = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class LoggerUnavailableError(ValueError):
    """A --logger backend whose package is not installed; the message names the extra to install."""


def check_loggers(names: Sequence[str]) -> None:
    """Import each backend's package now (before training); raise LoggerUnavailableError naming its extra."""
    for name in dict.fromkeys(names):
        if name not in MODULES:
            raise ValueError(f"--logger {name}: unknown; choose among {', '.join(MODULES)}")
        try:
            importlib.import_module(MODULES[name])
        except ImportError as e:
            raise LoggerUnavailableError(f"--logger {name} needs its package ({e}): "
                                         f"pip install 'detr-aligned[{name}]'") from None


class TensorBoardSink:
    """torch's SummaryWriter into OUTPUT_DIR/tensorboard."""

    name = "tensorboard"

    def __init__(self, out_dir: Path, cfg: Config):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def image(self, tag: str, image: Image.Image, step: int) -> None:
        import numpy as np

        self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")  # [H, W, 3] uint8
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run under OUTPUT_DIR/wandb, offline unless WANDB_MODE says otherwise (nothing leaves the machine)."""

    name = "wandb"

    def __init__(self, out_dir: Path, cfg: Config):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "detr"), name=out_dir.name, dir=str(out_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"), config=cfg.to_dict(),
                              reinit="create_new", settings=wandb.Settings(console="off", silent=True))

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, image: Image.Image, step: int) -> None:
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    """An MLflow run: in a local file store under OUTPUT_DIR/mlruns unless MLFLOW_TRACKING_URI is set."""

    name = "mlflow"

    def __init__(self, out_dir: Path, cfg: Config):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (out_dir / "mlruns").resolve().as_uri()
            # MLflow 3 refuses its file store unless asked for it; a local store is what this option promises
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "detr")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=out_dir.name).info.run_id
        self.client.log_dict(self.run_id, cfg.to_dict(), "config.json")

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), v, now, step) for k, v in values.items()])

    def image(self, tag: str, image: Image.Image, step: int) -> None:
        self.client.log_image(self.run_id, image, f"{mlflow_key(tag)}/step_{step:08d}.png")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


SINKS: dict[str, Callable[[Path, Config], Any]] = {"tensorboard": TensorBoardSink, "wandb": WandbSink,
                                                    "mlflow": MlflowSink}


def mlflow_key(name: str) -> str:
    """`name` with the characters MLflow refuses in a key (it allows letters, digits, _ - . / and space) as _."""
    return re.sub(r"[^\w\-./ ]", "_", name)


class ExperimentLoggers:
    """The run's backends; every call goes to each backend still working.

    A backend that raises is warned about once and dropped for the rest of the run; nothing it does reaches
    training. With no backends (other processes, or no --logger) every call does nothing.
    """

    def __init__(self, sinks: Sequence[Any] = ()):
        self.sinks = list(sinks)
        self.picture_failed = False

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log finite numbers under their tags at global training step `step`."""
        values = {k: float(v) for k, v in values.items() if math.isfinite(float(v))}
        if values:
            self._each("scalars", values, step)

    def image(self, tag: str, image: Image.Image, step: int) -> None:
        self._each("image", tag, image, step)

    def predictions(self, model: Any, dataset: Any, cfg: Config, device: Any, step: int) -> None:
        """A picture of the model's detections on a few val images, as val/predictions; a failure to draw warns
        (once) and logs no picture. The random state is left as it was: drawing never changes training."""
        if not self.sinks or self.picture_failed or dataset is None:
            return
        try:
            with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
                picture = prediction_picture(model, dataset, cfg, device)
        except Exception as e:  # noqa: BLE001 - a picture must never stop training
            self.picture_failed = True
            log.warning("--logger: could not draw the predictions picture (%s: %s); the numbers are still logged",
                        type(e).__name__, e)
            return
        self.image("val/predictions", picture, step)

    def close(self) -> None:
        self._each("close")
        self.sinks = []

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as e:  # noqa: BLE001 - a logger must never stop training
                self.sinks.remove(sink)
                log.warning("--logger %s failed (%s: %s); it is off for the rest of the run (log.txt keeps the "
                            "record)", sink.name, type(e).__name__, e)


def create_loggers(names: Sequence[str], out_dir: Path | None, cfg: Config) -> ExperimentLoggers:
    """Start the chosen backends under `out_dir` (None: another process than the main one, which logs nothing).
    A backend that cannot start (its package is there: `check_loggers`) warns and is left out."""
    if out_dir is None or not names:
        return ExperimentLoggers()
    sinks = []
    for name in dict.fromkeys(names):
        try:
            sinks.append(SINKS[name](out_dir, cfg))
        except Exception as e:  # noqa: BLE001 - a server down at the start must not stop training either
            log.warning("--logger %s could not start (%s: %s); training goes on without it", name,
                        type(e).__name__, e)
    if sinks:
        log.info("logging to %s under %s", ", ".join(s.name for s in sinks), out_dir)
    return ExperimentLoggers(sinks)


def train_scalars(train_stats: dict[str, float], lrs: Sequence[float]) -> dict[str, float]:
    """An epoch's mean training numbers as train/<name>, and each parameter group's learning rate
    (train/lr: the transformer and heads; train/lr_backbone)."""
    values = {f"train/{k}": v for k, v in train_stats.items() if k != "lr"}
    for name, lr in zip(("lr", "lr_backbone"), lrs):
        values[f"train/{name}"] = lr
    return values


def val_scalars(test_stats: dict[str, Any]) -> dict[str, float]:
    """Every number of an evaluation as val/<name> (the 12 COCO numbers, losses, mask AP, PQ), and per-class AP
    (the stats' "per_class_ap" {class name: AP, or {"AP": AP, ...}}, where the evaluation gives it) as
    val/AP_per_class/<name>."""
    values = {f"val/{k}": float(v) for k, v in test_stats.items() if _is_number(v)}
    per_class = test_stats.get("per_class_ap") or test_stats.get("test_per_class_ap") or {}
    for name, ap in (per_class.items() if isinstance(per_class, dict) else []):
        ap = ap.get("AP") if isinstance(ap, dict) else ap
        if _is_number(ap) and ap >= 0:  # COCOeval: -1 where a class has no boxes
            values[f"val/AP_per_class/{name}"] = float(ap)
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def prediction_picture(model: Any, dataset: Any, cfg: Config, device: Any, count: int = 4) -> Image.Image:
    """The first `count` validation images side by side, with the model's detections drawn (from the score the
    demo draws from for this class head)."""
    files = [dataset.report.records[i].file for i in list(dataset.ids)[:count]]
    detector = Detector(model, cfg.data.class_names, device=device,
                        threshold=DEMO_DRAW_THRESHOLDS.get(cfg.model.class_loss, 0.5),
                        size=val_short_side(cfg.data), max_size=cfg.data.max_size)
    images = [load_image(f) for f in files]
    found = detector(images)
    drawn = [draw_detections(draw_masks(im, d) if d.masks is not None else im, d) for im, d in zip(images, found)]
    return side_by_side(drawn)


def bars_shown(progress: bool) -> bool:
    """Whether tqdm draws progress bars: asked for, and stderr is a terminal (tqdm's own rule with disable=None)."""
    return progress and sys.stderr.isatty()


class ProgressLines:
    """One INFO line per epoch (loss, time elapsed and left) and per evaluation (AP, AP50), for runs without
    progress bars (stderr not a terminal, e.g. `detr train > log 2>&1`), which would otherwise be silent."""

    def __init__(self, epochs: int, first_epoch: int, enabled: bool):
        self.epochs, self.first_epoch, self.enabled = epochs, first_epoch, enabled
        self.start = time.monotonic()

    def epoch(self, epoch: int, train_stats: dict[str, float]) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / (epoch + 1 - self.first_epoch) * (self.epochs - epoch - 1)  # this run's mean epoch time
        log.info("epoch %d (%d/%d): loss %.4f, %s elapsed, about %s left", epoch, epoch + 1, self.epochs,
                 train_stats.get("loss", math.nan), clock(elapsed), clock(left))

    def evaluation(self, epoch: int, test_stats: dict[str, Any]) -> None:
        if not self.enabled:
            return
        extra = "".join(f", {name.replace('_', ' ')} {test_stats[name]:.3f}" for name in ("mask_AP", "PQ")
                        if name in test_stats)
        log.info("eval after epoch %d: AP %.3f, AP50 %.3f%s", epoch, test_stats.get("AP", math.nan),
                 test_stats.get("AP50", math.nan), extra)


def clock(seconds: float) -> str:
    """h:mm:ss (or m:ss under an hour)."""
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
