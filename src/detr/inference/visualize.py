"""Pictures: detections drawn on images, attention heat maps, and training curves.

Nothing here touches matplotlib's global state: figures are made with
`matplotlib.figure.Figure` (no pyplot) and rendered by the Agg canvas.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .detector import Detections

# Colour-blind-friendly, readable on photos (Okabe-Ito plus a few strong tones); by class id.
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (255, 255, 255), (255, 0, 110), (131, 56, 236), (58, 134, 255), (6, 214, 160)]


def colour(label: int) -> tuple[int, int, int]:
    """The drawing colour of a class id."""
    return PALETTE[label % len(PALETTE)]


def _font(image_size: tuple[int, int]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(10, round(min(image_size) / 40))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_detections(image: Image.Image, detections: Detections) -> Image.Image:
    """A copy of `image` (RGB) with each box, its class name and score drawn on it.

    The label sits on a filled box of the class colour, in black or white text whichever
    reads better, above the box (inside it when the box touches the top edge), and is moved
    left or up where it would leave the image, so that it is never cut off.
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = _font(out.size)
    width = max(2, round(min(out.size) / 200))
    for box, score, label, name in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                       detections.labels.tolist(), detections.names):
        rgb = colour(int(label))
        draw.rectangle(box, outline=rgb, width=width)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x0 = max(0, min(box[0], out.width - tw))  # kept inside the image
        y0 = box[1] - th if box[1] - th >= 0 else box[1]
        y0 = max(0, min(y0, out.height - th))
        draw.rectangle([x0, y0, x0 + tw, y0 + th], fill=rgb)
        ink = (0, 0, 0) if sum(c * w for c, w in zip(rgb, (0.299, 0.587, 0.114))) > 140 else (255, 255, 255)
        draw.text((x0 + 2 - left, y0 + 2 - top), text, fill=ink, font=font)
    return out


def overlay_heatmap(image: Image.Image, heat: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """`heat` [h, w] (any range) upsampled bilinearly to the image and blended on it in viridis."""
    import matplotlib

    heat = np.asarray(heat, dtype=np.float64)
    lo, hi = float(heat.min()), float(heat.max())
    norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    small = Image.fromarray((norm * 255).round().astype(np.uint8))
    big = np.asarray(small.resize(image.size, Image.Resampling.BILINEAR), dtype=np.float64) / 255
    coloured = (matplotlib.colormaps["viridis"](big)[..., :3] * 255).astype(np.float64)
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    return Image.fromarray(((1 - alpha) * base + alpha * coloured).round().astype(np.uint8))


def mark_point(image: Image.Image, xy: tuple[float, float], text: str = "") -> Image.Image:
    """A copy of `image` with a red cross (and optional text) at pixel `xy`."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    r = max(4, round(min(out.size) / 40))
    x, y = xy
    for dx, dy in ((r, r), (r, -r)):
        draw.line([x - dx, y - dy, x + dx, y + dy], fill=(255, 0, 0), width=max(2, r // 3))
    if text:
        draw.text((x + r + 2, y - r), text, fill=(255, 0, 0), font=_font(out.size))
    return out


# Panels drawn by `plot_logs`: (title, lines); a line is a tuple of alternative log.txt keys,
# the first present is drawn (COCO stats lists are reduced to their first item, AP@[.5:.95]).
CURVES: list[tuple[str, list[tuple[str, ...]]]] = [
    ("loss", [("train_loss",), ("test_loss",)]),
    ("class error (%)", [("train_class_error",), ("test_class_error",)]),
    ("AP (IoU 0.50:0.95)", [("test_coco_eval_bbox", "test_AP")]),
    ("box L1 loss", [("train_loss_bbox_unscaled", "train_loss_bbox"), ("test_loss_bbox_unscaled", "test_loss_bbox")]),
]


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON-lines records of a run's log.txt (one dict per epoch); bad lines are an error."""
    path = Path(path)
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg}); expected one JSON object per epoch") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
    return records


def _series(records: list[dict[str, Any]], keys: tuple[str, ...]) -> tuple[str, list[float], list[float]] | None:
    """(key, epochs, values) of the first of `keys` present; lists are reduced to their first item."""
    for key in keys:
        points = []
        for i, rec in enumerate(records):
            value = rec.get(key)
            value = value[0] if isinstance(value, list) and value else value
            if isinstance(value, (int, float)) and math.isfinite(value):
                points.append((float(rec.get("epoch", i)), float(value)))
        if points:
            return key, [p[0] for p in points], [p[1] for p in points]
    return None


def plot_logs(runs: Sequence[str | os.PathLike], output: str | os.PathLike, dpi: int = 100) -> Path:
    """Draw loss, class error and AP over epochs of one or several runs into one PNG.

    Args:
        runs: run folders (holding log.txt) or log files themselves.
        output: the PNG file to write.
        dpi: resolution; the figure is 12 x 8 inches.

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure

    logs = {}
    for run in runs:
        path = Path(run) / "log.txt" if Path(run).is_dir() else Path(run)
        if not path.is_file():
            raise ValueError(f"{run}: no log.txt found (expected a run folder written by `detr train`)")
        logs[str(run)] = read_log(path)
    fig = Figure(figsize=(12, 8), dpi=dpi)
    for ax, (title, lines) in zip(fig.subplots(2, 2).flat, CURVES):
        for run, records in logs.items():
            for keys in lines:
                found = _series(records, keys)
                if found:
                    key, epochs, values = found
                    ax.plot(epochs, values, marker="o" if len(values) < 20 else None, label=f"{run}: {key}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not in the log", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    output = Path(output)
    fig.savefig(output, format="png")
    return output
