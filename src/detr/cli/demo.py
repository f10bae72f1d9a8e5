"""`detr demo`: the built-in main job. Make the demo dataset, train a small preset model on
it (minutes on 2 CPU cores), evaluate it (COCO bbox AP) and draw its predictions. `detr demo --masks`:
the same for panoptic segmentation (demo_panoptic.py)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..config import config_from_flags, literal_choices
from ..presets import (
    DEMO_DATA,
    DEMO_DRAW_THRESHOLDS,
    DEMO_PRESET,
    PANOPTIC_DEMO,
    PANOPTIC_DEMO_DATA,
    PANOPTIC_DEMO_MASKS,
)
from . import show_progress
from .flags import make_parser


def argv_flags(argv: list[str]) -> list[str]:
    """The option names given in `argv` ("--num_train 5" and "--num_train=5" -> "num_train")."""
    return [a[2:].split("=", 1)[0] for a in argv if a.startswith("--")]


def draw_predictions(checkpoint: str | Path, images: list[Path], output: str | Path, threshold: float = 0.5) -> Path:
    """Draw the model's detections on `images` side by side into one PNG file."""
    from ..data.images import load_image
    from ..inference.detector import Detector
    from ..inference.visualize import draw_detections, side_by_side

    detector = Detector.from_pretrained(checkpoint, device="cpu", threshold=threshold)
    pictures = [load_image(p) for p in images]
    scale = 3  # demo images are small: enlarge them before drawing so that the labels stay readable
    drawn = [draw_detections(im.resize((im.width * scale, im.height * scale)),
                             dataclasses.replace(det, boxes=det.boxes * scale))
             for im, det in zip(pictures, detector(pictures))]
    output = Path(output)
    side_by_side(drawn).save(output)
    return output


def run_demo(overrides: dict[str, Any] | None = None, data: dict[str, int] | None = None,
             num_pictures: int = 4) -> dict[str, Any]:
    """Make the demo data (DEMO_DATA, with `data`'s sizes), train the demo preset (with `overrides`) on it,
    then evaluate and draw; returns the training summary."""
    from ..checkpoint import load_checkpoint
    from ..data import make_demo_dataset
    from ..runtime import native_bf16, resolve_device
    from ..training.train import train

    values = {**DEMO_PRESET, **(overrides or {})}
    if values.get("amp") is None:  # bf16 where the device computes it natively (BENCHMARKS.md, "Demos")
        values["amp"] = "bf16" if native_bf16(resolve_device(values["device"], "--device")) else "none"
    paths = make_demo_dataset(Path(values["output_dir"]) / "data", **{**DEMO_DATA, **(data or {})})
    cfg = config_from_flags({**values, **{k: str(v) for k, v in paths.items() if k != "root"}})
    summary = train(cfg, progress=show_progress())
    out = Path(cfg.train.output_dir)
    best = out / "best.pth" if (out / "best.pth").is_file() else out / "checkpoint.pth"
    saved = load_checkpoint(best)["config"]["data"]
    val_images = sorted(Path(saved["val_images"]).iterdir())[:num_pictures]
    picture = draw_predictions(best, val_images, out / "predictions.png",
                               threshold=DEMO_DRAW_THRESHOLDS[cfg.model.class_loss])
    print(f"predictions drawn on {len(val_images)} val images: {picture}")
    summary["picture"] = str(picture)
    return summary


def run_panoptic_demo(overrides: dict[str, Any] | None = None, data: dict[str, int] | None = None) -> dict[str, Any]:
    """`detr demo --masks` (demo_panoptic.run_panoptic_demo), imported when it runs: it brings torch."""
    from .demo_panoptic import run_panoptic_demo as run

    return run(overrides, data)


def main(argv: list[str]) -> int:
    """`detr demo [--epochs N] [--output_dir DIR] [--device cpu] ...`."""
    parser = make_parser("detr demo", __doc__)
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--output_dir", default=DEMO_PRESET["output_dir"], help="where everything is written")
    parser.add_argument("--epochs", type=int, default=DEMO_PRESET["epochs"],
                        help="training epochs (--masks: of each stage; default "
                             f"{PANOPTIC_DEMO['epochs']} + {PANOPTIC_DEMO_MASKS['epochs']})")
    parser.add_argument("--device", default=DEMO_PRESET["device"], help="cpu or cuda")
    parser.add_argument("--num_workers", type=int, default=DEMO_PRESET["num_workers"], help="data loading processes")
    parser.add_argument("--amp", choices=literal_choices("amp"), default=None,
                        help="mixed precision (default: bf16 where the device computes it natively, else none; "
                             "--masks: none)")
    parser.add_argument("--backbone_warmup", type=int, default=None,
                        help="backbone warm-up steps before training (stands in for ImageNet weights; "
                             f"default: {DEMO_PRESET['backbone_warmup']}; --masks: "
                             f"{PANOPTIC_DEMO['backbone_warmup']})")
    parser.add_argument("--num_train", type=int, default=DEMO_DATA["num_train"], help="training images to make")
    parser.add_argument("--num_val", type=int, default=DEMO_DATA["num_val"], help="validation images to make")
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    parser.add_argument("--masks", action="store_true",
                        help="the panoptic demo: shapes (things) on textured regions (stuff), detection trained "
                             "first, then the mask head on the frozen detector, PQ and mask AP, the segmentation "
                             "drawn (default sizes: "
                             f"{PANOPTIC_DEMO_DATA['num_train']} train, {PANOPTIC_DEMO_DATA['num_val']} val images; "
                             f"output {PANOPTIC_DEMO['output_dir']})")
    args = vars(parser.parse_args(argv))
    masks = args.pop("masks")
    data = {k: args.pop(k) for k in ("num_train", "num_val")}
    for name in ("backbone_warmup", "amp"):  # not given: the preset's (the detection demo's amp: run_demo's)
        if args[name] is None:
            del args[name]
    if not masks:
        args["lr_drop"] = args["epochs"] + 1  # a constant rate, as the preset: the weight average anneals
        run_demo(args, data)
        return 0
    args["lr_drop"] = max(1, args["epochs"] - 1)  # the last epoch at a tenth of the rate, as PANOPTIC_DEMO's stages
    given = set(argv_flags(argv))  # the panoptic demo's own sizes, folder and epochs unless given
    data = {k: v for k, v in data.items() if k in given}
    for name, flag in (("output_dir", "output_dir"), ("epochs", "epochs"), ("lr_drop", "epochs")):
        if flag not in given:
            del args[name]
    run_panoptic_demo(args, data)
    return 0
