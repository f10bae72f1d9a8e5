"""Masks in the COCO formats: panoptic segment-id PNGs, polygons and run-length encodings (RLE).

A COCO panoptic PNG stores one segment id per pixel in its colour, id = R + 256 G + 256^2 B;
id 0 is VOID (unlabelled). Instance annotations give a mask as polygons or as an RLE, either
uncompressed (`counts` a list, used for crowds) or compressed (`counts` a string, used in results).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..checkpoint import write_bytes
from ..panoptic_ids import id_to_rgb, rgb_to_id
from .annotations import is_number
from .errors import DatasetError


def _open_rgb_png(path: str | Path, header_only: bool) -> np.ndarray | tuple[int, int]:
    try:
        with Image.open(path) as img:
            if img.mode not in ("RGB", "RGBA"):
                raise DatasetError(f"{path}: a panoptic PNG must be RGB (id = R + 256 G + 256^2 B), "
                                   f"got mode {img.mode}")
            if header_only:
                return img.width, img.height
            return np.asarray(img.convert("RGB"))  # [H, W, 3]; alpha carries no id
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: panoptic PNG not found") from e
    except DatasetError:
        raise
    except Exception as e:  # PIL raises many types for bad files; all mean "unreadable"
        raise DatasetError(f"{path}: cannot decode panoptic PNG ({type(e).__name__}: {e})") from e


def read_id_png(path: str | Path) -> np.ndarray:
    """The [H, W] int64 segment ids of a panoptic PNG.

    Raises:
        DatasetError: the file is missing, cannot be decoded, or is not an RGB(A) image (a grey or
            palette image cannot hold three-channel ids); the message names the file.
    """
    rgb = _open_rgb_png(path, header_only=False)
    assert isinstance(rgb, np.ndarray)
    return rgb_to_id(rgb)


def id_png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a panoptic PNG from its header (raises as `read_id_png`)."""
    size = _open_rgb_png(path, header_only=True)
    assert isinstance(size, tuple)
    return size


def encode_id_png(ids: np.ndarray) -> bytes:
    """[H, W] segment ids -> the bytes of a panoptic PNG."""
    buf = io.BytesIO()
    Image.fromarray(id_to_rgb(ids), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_id_png(path: str | Path, ids: np.ndarray) -> None:
    """Write [H, W] segment ids as a panoptic PNG (atomically)."""
    write_bytes(Path(path), encode_id_png(ids))


def masks_to_boxes(masks: Tensor) -> Tensor:
    """[N, H, W] non-empty masks -> [N, 4] float boxes (x_min, y_min, x_max, y_max) of pixel indices.

    The maxima are the last covered pixel's index (a one-pixel-wide mask has width 0), as the
    official code's `masks_to_boxes` computes the panoptic targets' boxes.
    """
    import torchvision.ops

    if masks.shape[0] == 0:
        return torch.zeros((0, 4))
    return torchvision.ops.masks_to_boxes(masks.bool())


def segmentation_problem(segm: Any, height: int, width: int) -> str | None:
    """Why an instance `segmentation` cannot be turned into a mask of an image (height, width), or None."""
    if isinstance(segm, list):
        if not segm:
            return "segmentation is an empty list of polygons"
        for poly in segm:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(map(is_number, poly)):
                return "a polygon is not a list of at least 3 (x, y) finite numbers"
        return None
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if size != [height, width]:
            return f"RLE size {size!r} is not the image's [height, width] [{height}, {width}]"
        if isinstance(counts, str):
            return None if counts else "RLE counts is an empty string"
        if isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                            for c in counts):
            return None if sum(counts) == height * width else "RLE counts do not add up to height x width"
        return "RLE counts is neither a string nor a list of non-negative integers"
    return f"segmentation is a {type(segm).__name__}, neither polygons nor an RLE"


def segmentation_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO instance segmentation (polygons, uncompressed or compressed RLE) -> [H, W] bool mask.

    Polygons of one object are merged (their union), as the official `convert_coco_poly_to_mask`.
    """
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools' decode trips numpy 2's __array__(copy=) deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        if isinstance(segm, list):
            rles = mask_utils.frPyObjects(segm, height, width)
            return mask_utils.decode(rles).any(axis=2)  # [H, W, P] -> [H, W]
        if isinstance(segm.get("counts"), list):
            segm = mask_utils.frPyObjects(segm, height, width)  # uncompressed -> compressed
        return mask_utils.decode(segm).astype(bool)


def coco_mask_results(image_id: int, masks: np.ndarray | Tensor, scores: Any, labels: Any) -> list[dict[str, Any]]:
    """Instance masks in the COCO results format: `{"image_id", "category_id", "segmentation", "score"}`.

    `masks` [N, H, W] are binary masks at the original image size; the segmentation is a compressed
    RLE whose `counts` is a string (JSON-ready). Scores are rounded to 5 decimals as the box results.
    """
    from pycocotools import mask as mask_utils

    if isinstance(masks, Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asfortranarray(np.asarray(masks, dtype=np.uint8))  # [N, H, W]; pycocotools wants Fortran order
    scores = np.asarray(scores.detach().float().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64)
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels)
    out = []
    for mask, score, label in zip(masks, scores, labels):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": int(image_id), "category_id": int(label), "segmentation": rle,
                    "score": round(float(score), 5)})
    return out
