"""The built-in demo dataset: deterministic, well-formed COCO, reused when complete."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
import warnings

import numpy as np
import pytest
from pycocotools.coco import COCO

from detr.data import DEMO_CLASSES, build_dataset, make_demo_dataset, make_transforms


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic_and_reused(tmp_path):
    a = make_demo_dataset(tmp_path / "a", num_train=12, num_val=4, seed=3)
    b = make_demo_dataset(tmp_path / "b", num_train=12, num_val=4, seed=3)
    assert _digest(a["root"]) == _digest(b["root"])
    assert len(_digest(a["root"])) == 12 + 4 + 3  # images, two JSONs, the completion marker
    c = make_demo_dataset(tmp_path / "c", num_train=12, num_val=4, seed=4)
    assert _digest(c["root"]) != _digest(a["root"])

    stamp = a["train_annotations"].stat().st_mtime_ns
    make_demo_dataset(tmp_path / "a", num_train=12, num_val=4, seed=3)
    assert a["train_annotations"].stat().st_mtime_ns == stamp  # complete: not rewritten
    (a["train_images"] / "000005.jpg").unlink()
    make_demo_dataset(tmp_path / "a", num_train=12, num_val=4, seed=3)
    assert _digest(a["root"]) == _digest(b["root"])  # incomplete: regenerated


def test_demo_is_well_formed_coco(tmp_path):
    start = time.perf_counter()
    paths = make_demo_dataset(tmp_path, num_train=40, num_val=10)
    assert time.perf_counter() - start < 20
    for split, count in (("train", 40), ("val", 10)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(paths[f"{split}_annotations"]))
        assert len(coco.getImgIds()) == count
        assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == dict(enumerate(DEMO_CLASSES, 1))
        per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
        assert min(per_image) >= 1 and max(per_image) <= 6
        for a in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and w > 0 and h > 0
            assert (paths[f"{split}_images"] / img["file_name"]).is_file()
    with contextlib.redirect_stdout(io.StringIO()):
        train = COCO(str(paths["train_annotations"]))
    used = {a["category_id"] for a in train.loadAnns(train.getAnnIds())}
    assert used == {1, 2, 3, 4}


def test_demo_loads_cleanly_with_demo_sized_transforms(tmp_path):
    paths = make_demo_dataset(tmp_path, num_train=8, num_val=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean dataset gives no warning
        ds = build_dataset(paths["train_images"], paths["train_annotations"], train=True,
                           transforms=make_transforms(True, scales=[96, 128, 160], max_size=256,
                                                      crop=([96, 128, 144], 64, 128)))
    assert ds.num_classes == 5 and ds.class_names == ["N/A", *DEMO_CLASSES]
    for i in range(len(ds)):
        image, target = ds[i]
        assert 72 <= min(image.shape[1:]) <= 160
        assert len(target["boxes"]) == len(target["labels"]) and target["labels"].min() >= 1
        assert np.isfinite(target["boxes"].numpy()).all()


def test_detection_demo_annotations_are_unchanged(tmp_path):
    """The detection demo's boxes for a seed are fixed (recorded before the panoptic variant was added)."""
    paths = make_demo_dataset(tmp_path, num_train=12, num_val=4, seed=3)
    assert hashlib.sha256(paths["train_annotations"].read_bytes()).hexdigest() == (
        "2c83862a274fb63dfc02f02feecb991c4d5a8057b029d4d871565c84e450c75a")
    assert json.loads((tmp_path / "demo.json").read_text()) == {
        "version": 1, "num_train": 12, "num_val": 4, "image_size": 128, "seed": 3}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode under numpy 2
def test_panoptic_demo_is_consistent_coco_panoptic(tmp_path):
    from pycocotools import mask as mask_utils

    from detr.data import read_id_png, scan_panoptic
    from detr.data.demo import PANOPTIC_CLASSES, PANOPTIC_NUM_CLASSES

    a = make_demo_dataset(tmp_path / "a", num_train=16, num_val=4, seed=1, panoptic=True)
    b = make_demo_dataset(tmp_path / "b", num_train=16, num_val=4, seed=1, panoptic=True)
    assert _digest(a["root"]) == _digest(b["root"]) and len(_digest(a["root"])) == 2 * 20 + 4 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean: no skipped image, no dropped segment
        report = scan_panoptic(a["train_images"], a["train_panoptic_annotations"], a["train_panoptic"])
    assert report.num_classes == PANOPTIC_NUM_CLASSES == 8 and report.class_names[1:] == list(PANOPTIC_CLASSES)
    assert not report.problems and len(report.image_ids) == 16
    pan = json.loads(a["train_panoptic_annotations"].read_text())
    instances = json.loads(a["train_annotations"].read_text())
    rle_of = {(i["image_id"], i["bbox"][0], i["bbox"][1]): i["segmentation"] for i in instances["annotations"]}
    stuff_counts = []
    for entry in pan["annotations"]:
        ids = read_id_png(a["train_panoptic"] / entry["file_name"]).astype(np.int64)
        assert (ids != 0).all()  # every pixel is a thing or stuff, no VOID
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in entry["segments_info"])
        stuff_counts.append(sum(s["category_id"] > 4 for s in entry["segments_info"]))
        for s in entry["segments_info"]:
            ys, xs = np.nonzero(ids == s["id"])
            assert s["area"] == len(xs) and s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                                          ys.max() - ys.min() + 1]
            if s["category_id"] <= 4:  # the instance's RLE is the same mask
                rle = rle_of[(entry["image_id"], float(s["bbox"][0]), float(s["bbox"][1]))]
                assert np.array_equal(mask_utils.decode(rle).astype(bool), ids == s["id"])
    assert set(stuff_counts) <= {1, 2, 3} and np.mean(np.array(stuff_counts) >= 2) > 0.8
    assert len(instances["annotations"]) == sum(c <= 4 for e in pan["annotations"]
                                                for c in (s["category_id"] for s in e["segments_info"]))
