"""Pictures: detections drawn on images, attention heat maps, and training curves.

Nothing here touches matplotlib's global state: figures are made with
`matplotlib.figure.Figure` (no pyplot) and rendered by the Agg canvas.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import replace
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


Rect = tuple[int, int, int, int]  # (x0, y0, x1, y1) pixels, x1 and y1 excluded


def draw_detections(image: Image.Image, detections: Detections) -> Image.Image:
    """A copy of `image` (RGB) with each box, its class name and score drawn on it.

    Each label is a filled box of the class colour with black or white text, whichever reads better,
    placed by `label_boxes`: inside the image, and clear of the other labels where there is room.
    Boxes are drawn first and labels over them, the best detection last, so no outline crosses a label.
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = _font(out.size)
    width = max(2, round(min(out.size) / 200))
    texts = _texts(detections)
    rgbs = [colour(int(label)) for label in detections.labels.tolist()]
    for box, rgb in zip(detections.boxes.tolist(), rgbs):
        draw.rectangle(box, outline=rgb, width=width)
    places = label_boxes(out, detections)
    for text, rgb, (x0, y0, x1, y1) in reversed(list(zip(texts, rgbs, places))):
        left, top, _, _ = draw.textbbox((0, 0), text, font=font)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=rgb)
        ink = (0, 0, 0) if sum(c * w for c, w in zip(rgb, (0.299, 0.587, 0.114))) > 140 else (255, 255, 255)
        draw.text((x0 + LABEL_PAD - left, y0 + LABEL_PAD - top), text, fill=ink, font=font)
    return out


def draw_tracked(image: Image.Image, detections: Detections, track_ids: Sequence[int]) -> Image.Image:
    """`draw_detections` with each box's track id before its class name ("#3 person 0.97"); an id below 0
    (a track not yet confirmed) is left out."""
    if len(track_ids) != len(detections):
        raise ValueError(f"draw_tracked: {len(track_ids)} track ids for {len(detections)} detections")
    names = [f"#{int(i)} {name}" if int(i) >= 0 else name for i, name in zip(track_ids, detections.names)]
    return draw_detections(image, replace(detections, names=names))


LABEL_PAD = 2  # pixels between a label's text and its edge
MASK_ALPHA = 0.5  # weight of the class colour where a mask covers the image


def side_by_side(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """`images` in one row on white, `gap` pixels apart, top-aligned."""
    sheet = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1),
                              max(im.height for im in images)), (255, 255, 255))
    left = 0
    for im in images:
        sheet.paste(im, (left, 0))
        left += im.width + gap
    return sheet


def draw_masks(image: Image.Image, detections: Detections, alpha: float = MASK_ALPHA) -> Image.Image:
    """A copy of `image` (RGB) with each detection's mask filled translucently in its class colour.

    A covered pixel becomes round((1 - alpha) * pixel + alpha * colour); masks are laid on from the worst
    detection to the best, so where masks overlap the best one is blended last (on top).
    """
    if detections.masks is None:
        raise ValueError("draw_masks: these detections have no masks (the model has no mask head)")
    out = np.asarray(image.convert("RGB"), dtype=np.float64).copy()  # [H, W, 3]
    masks = detections.masks.cpu().numpy().astype(bool)  # [N, H, W]
    for mask, label in reversed(list(zip(masks, detections.labels.tolist()))):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(colour(int(label)), dtype=np.float64)
        out[mask] = out[mask].round()  # each layer rounds to 8 bits, as drawing on a picture would
    return Image.fromarray(out.astype(np.uint8))


def draw_segmentation(image: Image.Image, detections: Detections, alpha: float = MASK_ALPHA) -> Image.Image:
    """`draw_detections` (boxes and labels, placed by `label_boxes`) over `draw_masks`' translucent masks."""
    return draw_detections(draw_masks(image, detections, alpha), detections)


def _texts(detections: Detections) -> list[str]:
    return [f"{name} {score:.2f}" for name, score in zip(detections.names, detections.scores.tolist())]


def label_boxes(image: Image.Image, detections: Detections) -> list[Rect]:
    """Where `draw_detections` puts each detection's label: (x0, y0, x1, y1) pixels, x1 and y1 excluded.

    Labels are placed best detection first, each at the first free spot of: above the box's top-left
    corner, inside it, then the same at the top-right, below the box, inside its bottom, then further up
    or down along its sides; every spot is moved inside the image. When no spot is free of the labels
    placed before, the one overlapping them least is taken. (A label wider than the image starts at 0.)

    Hand-written on PIL's `textbbox`: torchvision's `draw_bounding_boxes` neither keeps labels inside
    the image nor apart, and supervision's `LabelAnnotator` would make supervision a dependency of
    `detr predict`.
    """
    draw = ImageDraw.Draw(image)
    font = _font(image.size)
    placed: list[Rect] = []
    for box, text in zip(detections.boxes.tolist(), _texts(detections)):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        size = (right - left + 2 * LABEL_PAD, bottom - top + 2 * LABEL_PAD)
        spots = _spots([round(v) for v in box], size, image.size)
        placed.append(_least_covered(spots, placed))
    return placed


def _least_covered(spots: list[Rect], placed: list[Rect]) -> Rect:
    """The first spot clear of every placed label, else the first of those overlapping them least."""
    best, best_area = spots[0], None
    for spot in spots:
        area = sum(_overlap(spot, p) for p in placed)
        if area == 0:
            return spot
        if best_area is None or area < best_area:
            best, best_area = spot, area
    return best


def _spots(box: list[int], size: tuple[int, int], image_size: tuple[int, int]) -> list[Rect]:
    """Candidate label places for `box`, in order of preference, moved inside the image, without repeats."""
    (x0, y0, x1, y1), (tw, th), (width, height) = box, size, image_size
    xs = (x0, x1 - tw)  # left-aligned, right-aligned with the box
    near = [(x, y) for y in (y0 - th, y0) for x in xs] + [(x, y) for y in (y1, y1 - th) for x in xs]
    steps = range(1, height // max(th, 1) + 2)  # then further along the box's sides, nearest first
    far = [(x, y) for n in steps for y in (y0 - th - n * th, y0 + n * th) for x in xs]
    spots: list[Rect] = []
    for x, y in near + far:
        x = max(0, min(x, width - tw))
        y = max(0, min(y, height - th))
        if (x, y, x + tw, y + th) not in spots:
            spots.append((x, y, x + tw, y + th))
    return spots


def _overlap(a: Rect, b: Rect) -> int:
    """Area shared by two rectangles."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


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
