"""`detr demo --masks`: the panoptic demo. Make the panoptic demo data (shapes as things on two or three
stuff regions), train the demo model as the official recipe does (detection first, then the mask head on the
frozen detector), evaluate PQ and mask AP after each epoch, and draw the panoptic segmentation of a few
validation images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..checkpoint import load_checkpoint, load_model_weights
from ..config import Config, config_from_flags
from ..data import make_demo_dataset
from ..data.annotations import read_json
from ..data.images import load_image
from ..data.transforms import preprocess, val_short_side
from ..inference.visualize import colour, side_by_side
from ..models.build import build_model
from ..postprocessing.masks import postprocess_panoptic
from ..presets import DEMO_PRESET, PANOPTIC_DEMO, PANOPTIC_DEMO_DATA, PANOPTIC_DEMO_MASKS
from ..training.train import train
from . import show_progress

log = logging.getLogger(__name__)


@torch.no_grad()
def draw_panoptic(checkpoint: str | Path, images: list[Path], categories: list[dict[str, Any]],
                  output: str | Path, scale: int = 3) -> Path:
    """The model's panoptic segmentation of `images`, as translucent class-coloured segments with their class
    names, side by side in one PNG file (enlarged `scale` times so that the labels stay readable)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = Config.from_dict(ckpt["config"])
    model = build_model(cfg.model).eval()
    load_model_weights(model, ckpt["model"], source=str(checkpoint))
    names = {c["id"]: c["name"] for c in categories}
    thing = {c["id"]: bool(c["isthing"]) for c in categories}
    drawn = []
    for path in images:
        image = load_image(path)
        x = preprocess(image, size=val_short_side(cfg.data), max_size=cfg.data.max_size)
        result = postprocess_panoptic(model([x]), [x.shape[-2:]], [(image.height, image.width)],
                                      lambda c: thing.get(c, False), class_loss=cfg.model.class_loss)[0]
        drawn.append(_overlay(image.resize((image.width * scale, image.height * scale)),
                              result["segment_ids"].numpy().repeat(scale, 0).repeat(scale, 1),
                              result["segments_info"], names))
    side_by_side(drawn).save(output)
    return Path(output)


def _overlay(image: Image.Image, ids: np.ndarray, segments: list[dict[str, Any]], names: dict[int, str]) -> Image.Image:
    """`image` with each segment of `ids` [H, W] tinted in its class colour (half opacity), the borders between
    segments in white, and each segment named at its innermost pixel (a centroid can fall outside a band)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H, W, 3]
    tint = base.copy()
    for seg in segments:
        tint[ids == seg["id"]] = colour(seg["category_id"])
    blended = 0.5 * base + 0.5 * tint
    border = np.zeros(ids.shape, dtype=bool)
    border[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    border[1:] |= ids[1:] != ids[:-1]
    blended[border] = 255
    out = Image.fromarray(blended.astype(np.uint8))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default()
    for seg in segments:
        inside = ids == seg["id"]
        if inside.any():
            depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]  # distance to the border
            y, x = np.unravel_index(int(depth.argmax()), depth.shape)
            text = names.get(seg["category_id"], str(seg["category_id"]))
            draw.text((int(x), int(y)), text, fill=(255, 255, 255), font=font, anchor="mm",
                      stroke_width=1, stroke_fill=(0, 0, 0))
    return out


def run_panoptic_demo(overrides: dict[str, Any] | None = None, data: dict[str, int] | None = None,
                      num_pictures: int = 4) -> dict[str, Any]:
    """Make the panoptic demo data (PANOPTIC_DEMO_DATA, with `data`'s sizes) and train on it as the official recipe
    does: the demo preset for detection (PANOPTIC_DEMO, into output_dir/detection), then the mask head on the
    frozen detector (PANOPTIC_DEMO_MASKS); `overrides` apply to both stages. Then draw; returns the mask stage's
    training summary, with the detection stage's under "detection"."""
    values = {**DEMO_PRESET, **PANOPTIC_DEMO, **(overrides or {})}
    out = Path(values["output_dir"])
    paths = make_demo_dataset(out / "data", panoptic=True, **{**PANOPTIC_DEMO_DATA, **(data or {})})
    flags = {f"{split}_{kind}": str(paths[f"{split}_{key}"]) for split in ("train", "val")
             for kind, key in (("images", "images"), ("annotations", "panoptic_annotations"), ("panoptic", "panoptic"))}
    detection = train(config_from_flags({**values, **flags, "output_dir": str(out / "detection")}),
                      progress=show_progress())
    detector = _last_or_best(out / "detection", best=True)
    masks = {**values, **PANOPTIC_DEMO_MASKS, **(overrides or {}), "frozen_weights": str(detector)}
    summary = train(config_from_flags({**masks, **flags}), progress=show_progress())
    val_images = sorted(Path(paths["val_images"]).iterdir())[:num_pictures]
    categories = read_json(paths["val_panoptic_annotations"])["categories"]
    # the last epoch: the one whose val numbers the run prints last
    picture = draw_panoptic(_last_or_best(out, best=False), val_images, categories, out / "panoptic.png")
    print(f"panoptic segmentation drawn on {len(val_images)} val images: {picture}")
    return {**summary, "picture": str(picture), "detection": detection}


def _last_or_best(folder: Path, best: bool) -> Path:
    """folder/best.pth when `best` and it exists, else folder/checkpoint.pth (the last epoch)."""
    return folder / "best.pth" if best and (folder / "best.pth").is_file() else folder / "checkpoint.pth"
