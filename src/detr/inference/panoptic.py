"""The panoptic segmentation of one image as `Detector.panoptic` returns it: COCO panoptic ids and segments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.masks import encode_id_png


@dataclass
class Panoptic:
    """One image's panoptic segmentation, in the COCO panoptic format.

    Attributes:
        segment_ids: [H, W] int64 at the original image size; 0 is VOID (no segment), segments count from 1
            (the official postprocessing's ids + 1, so that the file reads as COCO panoptic ground truth does).
        segments_info: one dict per segment: "id", "category_id", "isthing", "iscrowd" (0), "area" (pixels),
            "bbox" ([x, y, w, h] pixels) and "name" (the class name).
        image_size: (height, width) of the original image.
    """

    segment_ids: np.ndarray
    segments_info: list[dict[str, Any]]
    image_size: tuple[int, int]

    def png(self) -> bytes:
        """The COCO panoptic PNG: each pixel's segment id as R + 256 G + 256^2 B."""
        return encode_id_png(self.segment_ids)

    def to_coco(self, image_id: int, file_name: str) -> dict[str, Any]:
        """This image's entry of a COCO panoptic predictions JSON's "annotations" (`file_name`: its PNG)."""
        return {"image_id": int(image_id), "file_name": file_name, "segments_info": self.segments_info}


def from_official(result: dict[str, Any], name: Callable[[int], str]) -> Panoptic:
    """`postprocess_panoptic`'s result of one image (ids from 0) -> a `Panoptic` (ids from 1, names added)."""
    ids = result["segment_ids"].cpu().numpy().astype(np.int64)  # [H, W]
    segments = [{**s, "id": s["id"] + 1, "name": name(s["category_id"])} for s in result["segments_info"]]
    if segments:  # without segments every pixel is already 0, VOID
        ids = ids + 1
    return Panoptic(ids, segments, (int(ids.shape[0]), int(ids.shape[1])))
