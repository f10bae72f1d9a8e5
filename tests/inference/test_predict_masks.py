"""Inference with the mask head: `Detections.masks`, `Detector.panoptic`, the translucent overlay, and
`detr predict --masks` (pictures, COCO RLE results, COCO panoptic PNG + JSON), each checked against the
postprocessing run directly on the model's outputs or against formulas written here."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.cli.predict import main as predict_command
from detr.data.transforms import preprocess
from detr.inference.detector import Detections
from detr.inference.visualize import draw_detections, draw_masks, draw_segmentation, label_boxes

from ..helpers.predict import MAX_SIZE, SIZE, one_thread, save_official, save_ours, tiny_model, write_images  # noqa: F401

# The mask head needs hidden_dim a multiple of 128 and nheads of 8; the tiny trunk keeps it fast.
SEGM = {"backbone": "tiny", "hidden_dim": 128, "nheads": 8, "enc_layers": 1, "dec_layers": 1,
        "dim_feedforward": 128, "num_queries": 10}
NAMES = ["zero", "one", "two", "three", "four"]
FAST = ["--val_scale", str(SIZE), "--max_size", str(MAX_SIZE)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = detr.create_model("detr_r50", num_classes=5, masks=True, **SEGM).eval()
    with torch.no_grad():  # queries made to differ, one class to dominate: scores spread over 0.5-0.95
        model.detr.class_embed.bias[1] += 4.0
        model.detr.class_embed.weight.mul_(5.0)
        model.detr.query_embed.weight.mul_(5.0)
    return model


@pytest.fixture(scope="module")
def detector(model):
    return detr.Detector(model, NAMES, threshold=0.7, size=SIZE, max_size=MAX_SIZE)


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    return save_ours(model, tmp_path_factory.mktemp("w") / "segm.pth", NAMES, masks=True, num_classes=5, **SEGM)


def uint8_image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8))


def reference(model, images, threshold):
    """postprocess_segmentation on the raw outputs of a padded batch, thresholded and sorted here."""
    inputs = [preprocess(img, SIZE, MAX_SIZE) for img in images]
    with torch.no_grad():
        out = model(inputs)
    sizes = [tuple(img.shape[1:]) for img in images]
    processed = [tuple(x.shape[1:]) for x in inputs]
    found = []
    for r in detr.postprocess_segmentation(out, sizes, processed):
        order = [i for i in r["scores"].argsort(descending=True, stable=True).tolist() if r["scores"][i] >= threshold]
        found.append({k: v[order] for k, v in r.items()})
    return found, out, sizes, processed


def test_detections_masks_equal_postprocess_segmentation(model, detector):
    images = [uint8_image(60, 90, 1), uint8_image(80, 50, 2)]  # a batch of two sizes: padding and cropping
    got = detector(images, batch_size=2)
    expected, *_ = reference(model, images, 0.7)
    for det, ref, img in zip(got, expected, images):
        assert 0 < len(det) < SEGM["num_queries"]  # the threshold keeps some, not all
        assert det.masks.dtype == torch.bool and det.masks.shape == (len(det), *img.shape[1:])
        assert 0 < det.masks.float().mean() < 1  # masks that are neither empty nor full
        torch.testing.assert_close(det.scores, ref["scores"])
        torch.testing.assert_close(det.boxes, ref["boxes"])
        assert torch.equal(det.masks, ref["masks"])
        assert det.names == [NAMES[i] for i in ref["labels"].tolist()]


def test_detection_model_has_no_masks():
    det = detr.Detector(tiny_model(), threshold=0.5, size=SIZE, max_size=MAX_SIZE)(uint8_image(60, 90, 1))
    assert det.masks is None and len(det) > 0
    with pytest.raises(ValueError, match="no mask head"):
        det.to_coco_masks(1)


def test_panoptic_equals_official_postprocessing_with_ids_from_one(model, detector):
    image = uint8_image(70, 100, 3)
    pan = detector.panoptic(image, threshold=0.6)
    _, out, sizes, processed = reference(model, [image], 0.5)
    ref = detr.postprocess_panoptic(out, processed, sizes, threshold=0.6)[0]
    assert len(pan.segments_info) >= 2
    assert np.array_equal(pan.segment_ids, ref["segment_ids"].numpy() + 1)
    for ours, theirs in zip(pan.segments_info, ref["segments_info"], strict=True):
        assert ours == {**theirs, "id": theirs["id"] + 1, "name": NAMES[theirs["category_id"]]}
    png = np.asarray(Image.open(io.BytesIO(pan.png())).convert("RGB")).astype(np.int64)
    ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]  # COCO panoptic: R + 256 G + 256^2 B
    assert np.array_equal(ids, pan.segment_ids)
    for s in pan.segments_info:
        assert s["area"] == int((ids == s["id"]).sum()) > 4


def test_supervision_gets_the_masks(detector):
    pytest.importorskip("supervision")
    det = detector(uint8_image(60, 90, 1))
    sv = det.to_supervision()
    assert sv.mask.dtype == bool and np.array_equal(sv.mask, det.masks.numpy())


def hand_detections(height: int = 40, width: int = 60) -> Detections:
    """Two overlapping rectangles: class 1 (best) at rows 5-24, cols 5-29; class 2 at rows 15-34, cols 20-49."""
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 5:25, 5:30] = True
    masks[1, 15:35, 20:50] = True
    boxes = torch.tensor([[5.0, 5.0, 30.0, 25.0], [20.0, 15.0, 50.0, 35.0]])
    return Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 2]), ["one", "two"], (height, width),
                      torch.tensor([0, 1]), masks)


def test_translucent_overlay_blends_image_and_class_colour():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    got = np.asarray(draw_masks(Image.fromarray(pixels), hand_detections())).astype(np.int64)
    img = pixels.astype(np.float64)
    one, two = np.array([86, 180, 233.0]), np.array([0, 158, 115.0])  # the palette's colours of classes 1, 2
    blend = lambda base, rgb: np.round(0.5 * base + 0.5 * rgb)  # noqa: E731
    assert np.array_equal(got[10, 10], blend(img[10, 10], one))  # class 1 only
    assert np.array_equal(got[30, 40], blend(img[30, 40], two))  # class 2 only
    assert np.array_equal(got[20, 25], blend(blend(img[20, 25], two), one))  # both: the best on top
    assert np.array_equal(got[2, 2], img[2, 2]) and np.array_equal(got[38, 55], img[38, 55])  # outside: unchanged


def test_segmentation_picture_is_masks_then_boxes_and_labels():
    image = Image.fromarray(np.full((40, 60, 3), 100, dtype=np.uint8))
    det = hand_detections()
    got = draw_segmentation(image, det)
    assert np.array_equal(np.asarray(got), np.asarray(draw_detections(draw_masks(image, det), det)))
    x, y = 45, 30  # inside class 2's mask only, off its outline and every label
    assert not any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in label_boxes(got, det))
    assert np.array_equal(np.asarray(got)[y, x], np.round(0.5 * 100 + 0.5 * np.array([0, 158, 115.0])))


def decode_rle(segmentation: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools trips numpy 2's __array__(copy=) deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode({**segmentation, "counts": segmentation["counts"].encode("ascii")}).astype(bool)


def test_predict_masks_writes_pictures_rle_and_panoptic(weights, tmp_path):
    images = write_images(tmp_path / "images")
    out = tmp_path / "out"
    assert predict_command([str(images["rgb.png"].parent), "--weights", str(weights), "--output_dir", str(out),
                            "--masks", "--threshold", "0.7", *FAST]) == 0
    listed = {i["file_name"]: i for i in json.loads((out / "images.json").read_text())}
    rles = json.loads((out / "masks.json").read_text())
    panoptic = {a["image_id"]: a for a in json.loads((out / "panoptic.json").read_text())["annotations"]}
    detector = detr.Detector.from_pretrained(weights, threshold=0.7, size=SIZE, max_size=MAX_SIZE)
    assert detector.has_masks
    for path in images.values():
        entry = listed[str(path)]
        found = detector(path)
        mine = [r for r in rles if r["image_id"] == entry["id"]]
        assert len(mine) == len(found) > 0
        for r, mask, label, score in zip(mine, found.masks, found.labels.tolist(), found.scores.tolist()):
            assert np.array_equal(decode_rle(r["segmentation"]), mask.numpy())
            assert r["category_id"] == label and r["score"] == pytest.approx(score, abs=1e-5)
        picture = np.asarray(Image.open(out / entry["picture"]))
        drawn = draw_segmentation(Image.open(path).convert("RGB"), found)
        assert np.array_equal(picture, np.asarray(drawn))
        ann = panoptic[entry["id"]]
        png = np.asarray(Image.open(out / "panoptic" / ann["file_name"]).convert("RGB")).astype(np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        assert ids.shape == (entry["height"], entry["width"])
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
        assert all(s["area"] == int((ids == s["id"]).sum()) for s in ann["segments_info"])
        assert np.array_equal(ids, detector.panoptic(path).segment_ids)


def test_predict_masks_on_a_detection_model_names_weights(tmp_path):
    weights = save_official(tiny_model(), tmp_path / "det.pth")
    image = write_images(tmp_path / "images")["rgb.png"]
    with pytest.raises(ValueError, match=r"--masks: --weights .*det\.pth is a detection model without a mask head"):
        predict_command([str(image), "--weights", str(weights), "--nheads", "2", "--masks", "--output_dir",
                         str(tmp_path / "out"), *FAST])
