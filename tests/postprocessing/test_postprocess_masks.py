"""postprocess_panoptic beyond the official behaviour (which test_segmentation_alignment.py pins): each image's own
part of a padded batch's masks (`crop_padding`), and the class threshold of the sigmoid heads. Expected areas and
kept queries are worked out by hand below."""

from __future__ import annotations

import math

import pytest
import torch

import detr

HIGH, LOW = 10.0, -10.0


def padded_batch_outputs() -> dict[str, torch.Tensor]:
    """Two images as a model sees them padded to 80 x 80 (masks at 1/4: 20 x 20), three confident queries.

    Image 0 (80 x 80, no padding): query 0 owns the left half of the mask map, query 1 the right half.
    Image 1 (40 x 40, its mask map is the top-left 10 x 10): query 0 owns mask rows 0-4, query 1 rows 5-9, and
    query 2 owns everything else, i.e. the padding.
    """
    logits = torch.full((2, 3, 4), LOW)  # softmax head: 3 classes + "no object"
    logits[:, torch.arange(3), torch.arange(3)] = HIGH
    masks = torch.full((2, 3, 20, 20), LOW)
    masks[0, 0, :, :10] = masks[0, 1, :, 10:] = HIGH
    masks[1, 0, :5, :10] = masks[1, 1, 5:10, :10] = HIGH
    masks[1, 2] = HIGH
    masks[1, 2, :10, :10] = LOW
    return {"pred_logits": logits, "pred_masks": masks}


def areas(result: dict) -> dict[int, int]:
    return {s["category_id"]: s["area"] for s in result["segments_info"]}


def test_crop_padding_gives_each_image_its_own_part_of_the_masks():
    outputs, sizes = padded_batch_outputs(), [(80, 80), (40, 40)]
    cropped = detr.postprocess_panoptic(outputs, sizes, is_thing=lambda c: True, crop_padding=True)
    # upsampled x4 to 80 x 80 (bilinear: the 0/1 row boundary at mask row 5 lands on pixel row 20), then the top-left
    # 40 x 40 kept: rows 0-19 to query 0, rows 20-39 to query 1; the padding query wins no pixel and is dropped
    assert areas(cropped[1]) == {0: 20 * 40, 1: 20 * 40}
    ids = cropped[1]["segment_ids"]
    assert (ids[:20] == ids[0, 0]).all() and (ids[20:] == ids[-1, 0]).all() and ids[0, 0] != ids[-1, 0]
    # the official resizing stretches the whole 20 x 20 padded map to 40 x 40 (x2): queries 0 and 1 get 10 x 20
    # each and the padding query the other 1,200 pixels
    stretched = detr.postprocess_panoptic(outputs, sizes, is_thing=lambda c: True)
    assert areas(stretched[1]) == {0: 10 * 20, 1: 10 * 20, 2: 40 * 40 - 400}
    # the largest image has no padding: both ways agree, and with a single image too
    assert torch.equal(cropped[0]["segment_ids"], stretched[0]["segment_ids"])
    assert areas(cropped[0]) == {0: 80 * 40, 1: 80 * 40}
    one = {k: v[1:] for k, v in outputs.items()}
    one["pred_masks"] = one["pred_masks"][:, :, :10, :10]  # image 1 alone: its own 10 x 10 map
    alone = [detr.postprocess_panoptic(one, [(40, 40)], is_thing=lambda c: True, crop_padding=crop)[0]
             for crop in (False, True)]
    assert torch.equal(alone[0]["segment_ids"], alone[1]["segment_ids"])
    assert areas(alone[1]) == {0: 20 * 40, 1: 20 * 40}


@pytest.mark.parametrize("class_loss, kept", [("focal", 3), ("varifocal", 3), ("softmax", 1)])
def test_the_default_threshold_is_the_class_heads(class_loss, kept):
    """Four queries scoring 0.2, 0.35, 0.6 and 0.95, each owning a quarter of the image: a sigmoid head keeps
    those above 0.3, the softmax head those above the official 0.85."""
    scores = [0.2, 0.35, 0.6, 0.95]
    if class_loss == "softmax":  # the score is the softmax of [class 0, no object]: a logit of log(p / (1 - p))
        logits = torch.tensor([[math.log(p / (1 - p)), 0.0] for p in scores])[None]
    else:
        logits = torch.tensor([[math.log(p / (1 - p))] for p in scores])[None]  # one class, sigmoid
    masks = torch.full((1, 4, 8, 8), LOW)
    for q, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        masks[0, q, r:r + 4, c:c + 4] = HIGH
    result = detr.postprocess_panoptic({"pred_logits": logits, "pred_masks": masks}, [(32, 32)],
                                       is_thing=lambda c: True, class_loss=class_loss)[0]
    assert len(result["segments_info"]) == kept
    assert sum(s["area"] for s in result["segments_info"]) == 32 * 32  # every pixel to a kept query
