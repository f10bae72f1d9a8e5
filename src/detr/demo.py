"""`detr demo`: the built-in main job. Make the demo dataset, train a small preset model on
it (minutes on 2 CPU cores), evaluate it (COCO bbox AP) and draw its predictions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# A small model that learns the demo shapes on a CPU: ResNet-18 trunk, a thin two-layer
# transformer, a few queries (demo images hold at most 6 shapes), ~128 px images. No ImageNet
# weights can be fetched here, so the backbone starts random and is warmed up on the demo images
# (see warmup.py), then trains at half the transformer's rate.
DEMO_PRESET: dict[str, Any] = {
    "backbone": "resnet18", "hidden_dim": 128, "nheads": 8, "enc_layers": 2, "dec_layers": 2,
    "dim_feedforward": 512, "num_queries": 10, "dropout": 0.0, "attention_dropout": 0.0,
    "backbone_weights": "none", "backbone_warmup": 600,
    "lr": 2e-4, "lr_backbone": 1e-4, "batch_size": 4, "epochs": 50, "lr_drop": 42,
    "scales": [112, 128, 144], "max_size": 192, "val_scale": 128, "random_crop": False,
    "num_workers": 1, "device": "cpu", "output_dir": "runs/demo", "eval_every": 5,
}


def draw_predictions(checkpoint: str | Path, images: list[Path], output: str | Path, size: int, max_size: int,
                     threshold: float = 0.5) -> Path:
    """Draw the model's detections on `images` side by side into one PNG file."""
    from PIL import Image

    from .data import load_image
    from .predict import Detector
    from .visualize import draw_detections

    detector = Detector.from_pretrained(checkpoint, device="cpu", threshold=threshold, size=size, max_size=max_size)
    pictures = [load_image(p) for p in images]
    drawn = [draw_detections(im, detector(im)) for im in pictures]  # draw_detections copies
    scale = 2  # demo images are small; draw them larger so the labels stay readable
    drawn = [im.resize((im.width * scale, im.height * scale)) for im in drawn]
    sheet = Image.new("RGB", (sum(im.width for im in drawn) + 8 * (len(drawn) - 1), max(im.height for im in drawn)),
                      (255, 255, 255))
    x = 0
    for im in drawn:
        sheet.paste(im, (x, 0))
        x += im.width + 8
    output = Path(output)
    sheet.save(output)
    return output


def run_demo(overrides: dict[str, Any] | None = None, num_pictures: int = 4) -> dict[str, Any]:
    """Train the demo preset (with `overrides`), then evaluate and draw; returns the training summary."""
    from .cli_train import build_parser, config_from_args
    from .train import train

    args = build_parser("detr demo", "")
    cfg = config_from_args(args.parse_args([]), {**DEMO_PRESET, **(overrides or {})})
    summary = train(cfg)
    out = Path(cfg.train.output_dir)
    best = out / "best.pth" if (out / "best.pth").is_file() else out / "checkpoint.pth"
    from .checkpoint import load_checkpoint

    saved = load_checkpoint(best)["config"]["data"]
    val_images = sorted(Path(saved["val_images"]).iterdir())[:num_pictures]
    picture = draw_predictions(best, val_images, out / "predictions.png",
                               size=saved["val_scale"] or 128, max_size=saved["max_size"])
    print(f"predictions drawn on {len(val_images)} val images: {picture}")
    summary["picture"] = str(picture)
    return summary


def demo_command(argv: list[str]) -> int:
    """`detr demo [--epochs N] [--output_dir DIR] [--device cpu] ...`."""
    parser = argparse.ArgumentParser(prog="detr demo", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default=DEMO_PRESET["output_dir"], help="where everything is written")
    parser.add_argument("--epochs", type=int, default=DEMO_PRESET["epochs"], help="training epochs")
    parser.add_argument("--device", default=DEMO_PRESET["device"], help="cpu or cuda")
    parser.add_argument("--num_workers", type=int, default=DEMO_PRESET["num_workers"], help="data loading processes")
    parser.add_argument("--backbone_warmup", type=int, default=DEMO_PRESET["backbone_warmup"],
                        help="backbone warm-up steps before training (stands in for ImageNet weights)")
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    args = parser.parse_args(argv)
    run_demo(vars(args))
    return 0
