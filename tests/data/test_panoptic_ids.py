"""The one COCO panoptic colour encoding (detr.panoptic_ids), used by the dataset's PNGs and the panoptic output."""

from __future__ import annotations

import numpy as np
import pytest

from detr.data import masks as data_masks
from detr.data.annotations import is_number
from detr.panoptic_ids import MAX_SEGMENT_ID, id_to_rgb, rgb_to_id
from detr.postprocessing import masks as post_masks


def panopticapi_id2rgb(ids: np.ndarray) -> np.ndarray:
    """panopticapi's id2rgb, written out: the colour's channels are the id's base-256 digits."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    rest = ids.copy()
    for c in range(3):
        rgb[..., c] = rest % 256
        rest //= 256
    return rgb


def test_ids_round_trip_through_panopticapis_colours():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 1234567, MAX_SEGMENT_ID]], dtype=np.int64)
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, panopticapi_id2rgb(ids))
    back = rgb_to_id(rgb)
    assert back.dtype == np.int64 and np.array_equal(back, ids)


@pytest.mark.parametrize("bad", [-1, MAX_SEGMENT_ID + 1, 2**40])
def test_an_id_three_bytes_cannot_hold_is_refused(bad):
    with pytest.raises(ValueError, match="segment ids must lie in"):
        id_to_rgb(np.array([[1, bad]]))


def test_the_dataset_and_the_postprocessing_share_one_encoding():
    assert data_masks.id_to_rgb is post_masks.id_to_rgb is id_to_rgb
    assert data_masks.rgb_to_id is post_masks.rgb_to_id is rgb_to_id


def test_is_number_takes_any_json_number_but_bool_and_non_finite():
    assert is_number(3) and is_number(2.5) and is_number(10**400)  # a huge int is finite (no overflow)
    assert not is_number(True) and not is_number(float("nan")) and not is_number(float("inf")) and not is_number("1")
