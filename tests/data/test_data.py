"""Targets, transforms, collate and small helpers of detr.data, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from detr.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    build_dataset,
    class_names_from_annotations,
    coco_paths,
    collate_fn,
    make_transforms,
    num_classes_from_annotations,
    preprocess,
)
from detr.data.annotations import build_target
from detr.data.transforms import resize_shape
from detr.models.detr import pad_images
from detr.registry import COCO_CLASSES

from ..helpers.data import ann, image_entry, save_coco

# 100 x 80 image (w x h): one plain box, one clipped at the left/bottom, one zero-width, one
# entirely right of the image, one crowd box.
ANNS = [
    ann(1, 1, [10, 20, 30, 40], 1, area=1000.0),
    ann(2, 1, [-5, 70, 20, 20], 2, area=150.0),
    ann(3, 1, [90, 10, 0, 5], 3),
    ann(4, 1, [120, 10, 5, 5], 1),
    ann(5, 1, [0, 0, 10, 10], 2, iscrowd=1),
]
EXPECTED_XYXY = [[10, 20, 40, 60], [0, 70, 15, 80]]  # by hand: xywh -> xyxy, clipped to 100 x 80


def test_build_target_matches_hand_computation():
    t = build_target(ANNS, width=100, height=80)
    np.testing.assert_array_equal(t["boxes"], np.array(EXPECTED_XYXY, dtype=np.float32))
    assert t["labels"].tolist() == [1, 2] and t["labels"].dtype == np.int64
    assert t["area"].tolist() == [1000.0, 150.0]
    assert t["iscrowd"].tolist() == [0, 0]


@pytest.fixture
def hand_dataset(tmp_path):
    Image.new("RGB", (100, 80), (90, 60, 30)).save(tmp_path / "a.png")
    return tmp_path, save_coco(tmp_path / "ann.json", [image_entry(1, "a.png", 100, 80)], ANNS)


@pytest.mark.parametrize("val_scale", [80, 160])
def test_dataset_target_is_normalised_cxcywh(hand_dataset, val_scale):
    folder, ann_file = hand_dataset
    with pytest.warns(UserWarning, match="dropped"):  # the zero-width and outside boxes
        ds = build_dataset(folder, ann_file, train=False, transforms=make_transforms(False, val_scale=val_scale))
    image, target = ds[0]
    k = val_scale / 80
    assert image.shape == (3, round(80 * k), round(100 * k)) and image.dtype == torch.float32
    expected = torch.tensor([[25 / 100, 40 / 80, 30 / 100, 40 / 80], [7.5 / 100, 75 / 80, 15 / 100, 10 / 80]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [1, 2] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 1
    assert target["orig_size"].tolist() == [80, 100]
    assert target["size"].tolist() == [round(80 * k), round(100 * k)]
    torch.testing.assert_close(target["area"], torch.tensor([1000.0, 150.0]) * k * k)
    # evaluation ground truth keeps every well-formed annotation (crowd included), as the file has it
    assert sorted(ds.coco.getAnnIds()) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("h, w, size, max_size, expected", [
    (480, 640, 800, 1333, (800, 1066)),  # short side 800, long 800 * 640 / 480 = 1066.7 -> 1066
    (640, 480, 800, 1333, (1066, 800)),
    (100, 1000, 800, 1333, (133, 1330)),  # long side capped: short = round(1333 / 10) = 133
    (500, 500, 608, 1333, (608, 608)),
    (800, 1066, 800, 1333, (800, 1066)),  # already at size: unchanged
    (1, 10000, 800, 1333, (1, 1333)),  # extreme aspect: 1 px short side, long side capped
])
def test_resize_shape_follows_official_rounding(h, w, size, max_size, expected):
    assert resize_shape(h, w, size, max_size) == expected


COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}


def _pixel_box(image: torch.Tensor, colour: tuple[int, int, int]) -> list[float] | None:
    """xyxy of the pixels closest to `colour` in a normalised image, or None."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = (image * std + mean) * 255
    want = torch.tensor(colour, dtype=torch.float32)[:, None, None]
    mask = ((rgb > 127.5) == (want > 127.5)).all(0)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return None
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.fixture
def colour_dataset(tmp_path):
    """Three solid rectangles of distinct colours (labels 1, 2, 3) on black, 120 x 100."""
    boxes = {1: [8, 10, 30, 20], 2: [60, 40, 44, 50], 3: [20, 70, 20, 18]}  # xywh
    img = Image.new("RGB", (120, 100), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for label, (x, y, w, h) in boxes.items():
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[label])
    img.save(tmp_path / "c.png")
    anns = [ann(i, 1, b, category_id=i) for i, b in boxes.items()]
    return tmp_path, save_coco(tmp_path / "c.json", [image_entry(1, "c.png", 120, 100)], anns), boxes


def test_train_transforms_move_boxes_with_pixels(colour_dataset):
    """Over many random draws (flip, resize, crop), every box matches where its colour is."""
    folder, ann_file, _ = colour_dataset
    tf = make_transforms(True, scales=[64, 80, 96], max_size=1000, crop=([80, 100], 40, 90))
    ds = build_dataset(folder, ann_file, train=True, transforms=tf)
    sizes = set()
    for seed in range(40):
        torch.manual_seed(seed)
        image, target = ds[0]
        h, w = image.shape[1:]
        sizes.add(min(h, w))
        assert target["size"].tolist() == [h, w]
        for label, colour in COLOURS.items():
            found = _pixel_box(image, colour)
            rows = (target["labels"] == label).nonzero().flatten()
            if len(rows) == 0:  # dropped by the crop: at most a sliver of colour may remain
                assert found is None or min(found[2] - found[0], found[3] - found[1]) <= 2, (seed, label)
                continue
            cx, cy, bw, bh = target["boxes"][rows[0]].tolist()
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            assert found is not None
            assert max(abs(a - b) for a, b in zip(box, found)) <= 2.0, (seed, label, box, found)
    assert sizes == {64, 80, 96}


def test_flip_and_resize_of_a_known_box(colour_dataset):
    """No crop branch, one scale: the output is the hand-computed box, flipped or not, and both occur."""
    folder, ann_file, boxes = colour_dataset
    ds = build_dataset(folder, ann_file, train=True, transforms=make_transforms(True, scales=[50], crop=None))
    x, y, w, h = boxes[1]  # image 120 x 100 -> 60 x 50, factor 0.5
    plain = [(x + w / 2) / 120, (y + h / 2) / 100, w / 120, h / 100]
    flipped = [1 - plain[0], *plain[1:]]
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = ds[0]
        assert image.shape == (3, 50, 60)
        got = target["boxes"][target["labels"] == 1][0].tolist()
        kind = "plain" if np.allclose(got, plain, atol=1e-6) else "flipped"
        assert np.allclose(got, plain if kind == "plain" else flipped, atol=1e-6), got
        seen.add(kind)
    assert seen == {"plain", "flipped"}


def test_preprocess_matches_hand_normalisation():
    colour = (10, 200, 30)
    out = preprocess(Image.new("RGB", (640, 480), colour))
    assert out.shape == (3, 800, 1066) and out.dtype == torch.float32 and type(out) is torch.Tensor
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[c], torch.full_like(out[c], expected), atol=1e-5, rtol=0)
    assert preprocess(Image.new("RGB", (30, 60)), size=128, max_size=200).shape == (3, 200, 100)
    with pytest.raises(ValueError, match="RGB"):
        preprocess(Image.new("L", (8, 8)))


def test_collate_keeps_lists_that_the_model_pads(hand_dataset):
    folder, ann_file = hand_dataset
    with pytest.warns(UserWarning):
        ds = build_dataset(folder, ann_file, train=False, transforms=make_transforms(False, val_scale=80))
    images, targets = collate_fn([ds[0], ds[0]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 2
    batch, mask = pad_images(images)
    assert batch.shape == (2, 3, 80, 100) and not mask.any()


def test_coco_classes_match_torchvision():
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    reference = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]  # [0] is "__background__"
    assert len(COCO_CLASSES) == 91 and COCO_CLASSES[0] == "N/A"
    assert COCO_CLASSES[1:] == reference[1:]
    assert [i for i, n in enumerate(COCO_CLASSES) if n == "N/A"] == [0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83]


def test_class_names_and_num_classes_from_annotations(tmp_path):
    cats = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    f = save_coco(tmp_path / "a.json", [], [ann(1, 1, [0, 0, 1, 1], 5)], cats)
    assert num_classes_from_annotations(f) == 6  # annotation id 5 is the largest
    assert class_names_from_annotations(f) == ["N/A", "cat", "N/A", "dog", "N/A", "N/A"]
    with pytest.raises(DatasetError, match="no category ids"):
        num_classes_from_annotations(save_coco(tmp_path / "b.json", [], [], []))


def test_coco_paths(tmp_path):
    with pytest.raises(DatasetError, match="folder not found"):
        coco_paths(tmp_path / "nope")
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text("{}")
    with pytest.raises(DatasetError, match="val2017.*instances_val2017.json"):
        coco_paths(tmp_path)
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    assert coco_paths(tmp_path) == (tmp_path / "train2017", tmp_path / "annotations" / "instances_train2017.json",
                                    tmp_path / "val2017", tmp_path / "annotations" / "instances_val2017.json")


def test_preprocess_accepts_tensors_like_pil():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    from_pil = preprocess(Image.fromarray(arr), size=96, max_size=400)
    as_uint8 = torch.from_numpy(arr).permute(2, 0, 1)  # [3, H, W]
    torch.testing.assert_close(preprocess(as_uint8, size=96, max_size=400), from_pil)
    from_float = preprocess(as_uint8.float() / 255, size=96, max_size=400)
    assert from_float.shape == (3, 96, 128)
    assert (from_float - from_pil).abs().max() < 0.05  # uint8 vs float resampling rounding only
