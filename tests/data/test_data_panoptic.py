"""COCO panoptic reading and instance masks, against masks drawn independently here; every bad input
is skipped with one counted warning naming the file, or refused up front with a DatasetError."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision import tv_tensors

from detr.data import (
    CocoPanoptic,
    DatasetError,
    build_dataset,
    build_panoptic_dataset,
    coco_panoptic_paths,
    make_transforms,
    scan_panoptic,
)
from detr.data.transforms import RandomShortSideResize

from ..helpers.data import ann, image_entry, save_coco

H, W = 30, 40
CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
              {"id": 7, "name": "sky", "isthing": 0}]


def _drawn() -> tuple[np.ndarray, list[dict]]:
    """An [H, W] id map drawn with numpy and its segments_info: a disc, a box, a crowd, sky, VOID."""
    yy, xx = np.mgrid[0:H, 0:W]
    ids = np.full((H, W), 0x0A0B0C, dtype=np.int64)  # sky: all three channels used
    ids[:, 35:] = 0  # VOID strip
    ids[(yy - 12) ** 2 + (xx - 10) ** 2 <= 36] = 0x010203  # a disc of radius 6 (a person)
    ids[20:26, 18:30] = 0x000100  # a car
    ids[2:6, 25:33] = 0x123456  # a crowd of people
    segs = [(0x010203, 1, 0), (0x000100, 3, 0), (0x123456, 1, 1), (0x0A0B0C, 7, 0)]
    info = [{"id": s, "category_id": c, "iscrowd": k, "area": int((ids == s).sum()) + 1} for s, c, k in segs]
    return ids, info


def _png_bytes_path(path, ids: np.ndarray) -> None:
    rgb = np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], axis=-1).astype(np.uint8)  # id = R + 256 G + 256^2 B
    Image.fromarray(rgb, mode="RGB").save(path)


def _write(root, n: int = 2) -> tuple:
    """n images with the drawn panoptic annotation; returns (images_dir, ann_file, png_dir, json dict)."""
    (root / "img").mkdir()
    (root / "png").mkdir()
    ids, info = _drawn()
    images, anns = [], []
    for i in range(1, n + 1):
        Image.new("RGB", (W, H), (90, 120, 150)).save(root / "img" / f"{i:03d}.jpg")
        _png_bytes_path(root / "png" / f"{i:03d}.png", ids)
        images.append({"id": i, "file_name": f"{i:03d}.jpg", "width": W, "height": H})
        anns.append({"image_id": i, "file_name": f"{i:03d}.png", "segments_info": [dict(s) for s in info]})
    data = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (root / "panoptic.json").write_text(json.dumps(data))
    return root / "img", root / "panoptic.json", root / "png", data


def _identity(image, target):
    return image, target


def test_reader_matches_masks_drawn_here(tmp_path):
    images, ann_file, pngs, _ = _write(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean dataset gives no warning
        ds = build_panoptic_dataset(images, ann_file, pngs, train=False)
    assert len(ds) == 2 and ds.num_classes == 8 and ds.class_names[7] == "sky" and ds.categories == CATEGORIES
    raw = CocoPanoptic(ds.report, transforms=_identity)  # the target before transforms
    _, target = raw[0]
    ids, info = _drawn()
    expected = np.stack([ids == s["id"] for s in info])  # [4, H, W] in segments_info order
    assert torch.equal(target["masks"], torch.from_numpy(expected))
    assert target["labels"].tolist() == [1, 3, 1, 7] and target["iscrowd"].tolist() == [0, 0, 1, 0]  # crowd kept
    assert target["area"].tolist() == [s["area"] for s in info]  # the JSON's area, as the official target
    boxes = [[xs.min(), ys.min(), xs.max(), ys.max()] for ys, xs in (np.nonzero(m) for m in expected)]
    assert target["boxes"].tolist() == boxes  # inclusive pixel indices (official masks_to_boxes)
    assert target["boxes"][1].tolist() == [18, 20, 29, 25]
    image, t = ds[1]  # the validation pipeline resizes image and masks together
    assert t["masks"].dtype == torch.bool and t["masks"].shape[1:] == image.shape[1:] == (800, 1066)
    assert t["image_id"] == 2 and t["orig_size"].tolist() == [H, W] and t["boxes"].shape == (4, 4)


@pytest.mark.reference
def test_boxes_follow_the_official_masks_to_boxes(tmp_path, ref):
    images, ann_file, pngs, _ = _write(tmp_path, n=1)
    _, target = CocoPanoptic(scan_panoptic(images, ann_file, pngs), transforms=_identity)[0]
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor), ref.box_ops.masks_to_boxes(target["masks"]))


def test_masks_resize_as_the_official_nearest_interpolation():
    masks = torch.from_numpy(np.stack([_drawn()[0] == s["id"] for s in _drawn()[1]]))  # [4, 30, 40]
    image = tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8))
    for size in (17, 45, 64):
        _, out = RandomShortSideResize([size])(image, {"masks": tv_tensors.Mask(masks)})
        official = F.interpolate(masks[:, None].float(), out["masks"].shape[-2:], mode="nearest")[:, 0] > 0.5
        assert torch.equal(out["masks"].bool(), official), size


def _scan_warning(*args, **kwargs):
    with pytest.warns(UserWarning) as record:
        report = scan_panoptic(*args, **kwargs)
        report.warn()
    assert len(record) == 1
    return report, str(record[0].message)


@pytest.mark.parametrize("case, kind, names", [
    ("png_missing", "png_missing", "002.png"),
    ("png_size", "png_size_mismatch", "002.png: 40x31, image 002.jpg 40x30"),
    ("png_grey", "png_unreadable", "must be RGB"),
    ("id_not_in_json", "segment_not_in_json", f"002.png: id {0x000100}"),
    ("id_not_in_png", "segment_not_in_png", "002.png: id 99"),
    ("unknown_category", "segment_unknown_category", "002.png: segment 66051: category_id 5"),
    ("no_annotation", "panoptic_unannotated", "002.jpg"),
    ("duplicate_segment", "segment_malformed", "id listed twice"),
])
def test_bad_input_is_skipped_with_a_counted_warning(tmp_path, case, kind, names):
    images, ann_file, pngs, data = _write(tmp_path)
    segments = data["annotations"][1]["segments_info"]
    if case == "png_missing":
        (pngs / "002.png").unlink()
    elif case == "png_size":
        _png_bytes_path(pngs / "002.png", np.zeros((H + 1, W), dtype=np.int64))
    elif case == "png_grey":
        Image.new("L", (W, H), 3).save(pngs / "002.png")
    elif case == "id_not_in_json":
        del segments[1]
    elif case == "id_not_in_png":
        segments.append({"id": 99, "category_id": 3, "iscrowd": 0, "area": 4})
    elif case == "unknown_category":
        segments[0]["category_id"] = 5
    elif case == "no_annotation":
        del data["annotations"][1]
    else:
        segments.append(dict(segments[0]))
    ann_file.write_text(json.dumps(data))
    report, message = _scan_warning(images, ann_file, pngs)
    assert report.problems[kind].count == 1 and names in message and str(ann_file) in message
    skips_image = kind in ("png_missing", "png_size_mismatch", "png_unreadable", "panoptic_unannotated")
    assert report.image_ids == ([1] if skips_image else [1, 2])
    if not skips_image:  # the image stays, without the bad segment
        ds = CocoPanoptic(report, transforms=_identity)
        expected = {"id_not_in_json": [1, 1, 7], "unknown_category": [3, 1, 7]}.get(case, [1, 3, 1, 7])
        assert ds[1][1]["labels"].tolist() == expected and ds[0][1]["labels"].tolist() == [1, 3, 1, 7]
        gt = report.panoptic_gt()["annotations"][1]["segments_info"]
        assert [s["category_id"] for s in gt] == expected  # evaluation sees the same segments


@pytest.mark.parametrize("case, message", [
    ("num_classes", "category_id 7, num_classes=5"),
    ("no_categories", "no 'categories' with an integer id and isthing"),
    ("no_usable_image", "no usable image"),
    ("png_folder", "panoptic PNG folder not found"),
])
def test_unusable_datasets_are_refused_up_front(tmp_path, case, message):
    images, ann_file, pngs, data = _write(tmp_path)
    kwargs = {}
    if case == "num_classes":
        kwargs["num_classes"] = 5
    elif case == "no_categories":
        data["categories"] = [{"id": 1, "name": "person"}]  # no isthing
    elif case == "no_usable_image":
        for p in pngs.iterdir():
            p.unlink()
    else:
        pngs = tmp_path / "nowhere"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan_panoptic(images, ann_file, pngs, **kwargs)
    assert str(ann_file) in str(e.value) or str(pngs) in str(e.value)


def test_headers_only_scan_drops_absent_segments_when_loading(tmp_path):
    images, ann_file, pngs, data = _write(tmp_path, n=1)
    data["annotations"][0]["segments_info"].append({"id": 99, "category_id": 3, "iscrowd": 0})
    ann_file.write_text(json.dumps(data))
    report = scan_panoptic(images, ann_file, pngs, decode=False)
    assert not report.problems  # not seen without decoding
    assert CocoPanoptic(report, transforms=_identity)[0][1]["labels"].tolist() == [1, 3, 1, 7]


def test_coco_panoptic_paths(tmp_path):
    coco, pan = tmp_path / "coco", tmp_path / "pan"
    for p in (coco / "train2017", coco / "val2017", pan / "panoptic_train2017", pan / "panoptic_val2017",
              pan / "annotations"):
        p.mkdir(parents=True)
    (pan / "annotations" / "panoptic_train2017.json").write_text("{}")
    with pytest.raises(DatasetError, match="panoptic_val2017.json"):
        coco_panoptic_paths(coco, pan)
    (pan / "annotations" / "panoptic_val2017.json").write_text("{}")
    paths = coco_panoptic_paths(coco, pan)
    assert paths["val_panoptic"] == pan / "panoptic_val2017" and paths["train_images"] == coco / "train2017"


def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE, written here: run lengths over column-major pixels, starting with zeros."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def test_instance_masks_from_polygons_and_rle(tmp_path):
    from pycocotools import mask as mask_utils

    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    rect = np.zeros((H, W), dtype=bool)
    rect[3:11, 4:20] = True  # the polygon (4, 3)-(20, 11) covers columns 4..19 and rows 3..10
    blob = np.zeros((H, W), dtype=bool)
    blob[15:25, 22:30] = blob[18:28, 25:36] = True
    small = np.zeros((H, W), dtype=bool)
    small[1:4, 30:38] = True
    compressed = mask_utils.encode(np.asfortranarray(small.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()
    anns = [ann(1, 1, [4, 3, 16, 8], 1, segmentation=[[4, 3, 20, 3, 20, 11, 4, 11]]),
            ann(2, 1, [22, 15, 14, 13], 2, segmentation={"size": [H, W], "counts": _uncompressed_rle(blob)}),
            ann(3, 1, [30, 1, 8, 3], 3, segmentation=compressed),
            ann(4, 1, [0, 0, 5, 5], 1, iscrowd=1, segmentation={"size": [H, W], "counts": [0, H * W]}),
            ann(5, 1, [0, 20, 5, 5], 2),  # no segmentation: dropped with masks, kept without
            ann(6, 1, [0, 20, 5, 5], 2, segmentation={"size": [H + 1, W], "counts": [H * W + W]})]
    ann_file = save_coco(tmp_path / "inst.json", [image_entry(1, "a.png", W, H)], anns)
    with pytest.warns(UserWarning, match="segmentation_malformed|segmentation is not polygons") as record:
        ds = build_dataset(tmp_path, ann_file, train=False, masks=True, transforms=_identity)
    assert "annotation 5" in str(record[0].message) and "annotation 6" in str(record[0].message)
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 2, 3]
    assert torch.equal(target["masks"], torch.from_numpy(np.stack([rect, blob, small])))
    assert len(build_dataset(tmp_path, ann_file, train=False, transforms=_identity)[0][1]["labels"]) == 5
    gt = ds.coco  # the evaluation ground truth keeps only annotations with usable segmentations
    assert sorted(a["id"] for a in gt.dataset["annotations"]) == [1, 2, 3, 4]


def test_instance_masks_follow_the_training_transforms(tmp_path):
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    anns = [ann(1, 1, [4, 3, 16, 8], 1, segmentation=[[4, 3, 20, 3, 20, 11, 4, 11]]),
            ann(2, 1, [30, 20, 6, 6], 2, segmentation=[[30, 20, 36, 20, 36, 26, 30, 26]])]
    ann_file = save_coco(tmp_path / "inst.json", [image_entry(1, "a.png", W, H)], anns)
    ds = build_dataset(tmp_path, ann_file, train=True, masks=True,
                       transforms=make_transforms(True, scales=[24, 32], max_size=64, crop=([30], 12, 20)))
    for seed in range(12):
        torch.manual_seed(seed)
        image, t = ds[0]
        assert t["masks"].shape == (len(t["labels"]), *image.shape[1:]) and t["masks"].dtype == torch.bool
        for mask, box in zip(t["masks"], t["boxes"]):  # each kept box still has its object's pixels
            ys, xs = torch.nonzero(mask, as_tuple=True)
            cx = (xs.float().mean() + 0.5) / image.shape[2]
            assert len(xs) > 0 and abs(cx - box[0]) < 0.5 * box[2] + 0.05
