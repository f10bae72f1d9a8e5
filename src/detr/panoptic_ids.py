"""The COCO panoptic colour encoding of segment ids: id = R + 256 G + 256^2 B (id 0 is VOID).

One implementation for the dataset's PNGs (data/masks.py) and the model's panoptic output
(postprocessing/masks.py), so that both read and write the same colours and refuse the same ids.
"""

from __future__ import annotations

import numpy as np

MAX_SEGMENT_ID = 256**3 - 1  # the largest id three 8-bit channels hold


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 colours -> [H, W] int64 segment ids."""
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_id: expected colours [..., 3], got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """[H, W] ids in [0, MAX_SEGMENT_ID] -> [H, W, 3] uint8 colours (the inverse of `rgb_to_id`).

    Raises:
        ValueError: an id is negative or above MAX_SEGMENT_ID (three bytes cannot hold it; wrapping it would
            silently merge it with another segment).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"segment ids must lie in [0, {MAX_SEGMENT_ID}], got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)
