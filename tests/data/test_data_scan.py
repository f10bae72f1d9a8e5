"""Bad input written by the tests: each is converted, skipped with one counted warning, or refused
before training with a DatasetError that names the file."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detr.data import DatasetError, build_dataset, load_image, make_transforms, scan_dataset

from ..helpers.data import ann, encode, image_entry, save_coco

RED = (255, 0, 0)


def _marked(w: int, h: int) -> Image.Image:
    """Grey image with a red 8 x 8 block at the top-left corner of the stored pixels."""
    img = Image.new("RGB", (w, h), (128, 128, 128))
    img.paste(RED, (0, 0, 8, 8))
    return img


def _exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def _write_zoo(root):
    """Every bad-input kind in one folder; returns (images_dir, ann_file)."""
    d = root / "imgs"
    d.mkdir()
    rgb = Image.new("RGB", (40, 30), (200, 100, 50))
    files = {
        "good.png": encode(rgb, "PNG"),
        "gray.png": encode(Image.new("L", (40, 30), 77), "PNG"),
        "rgba.png": encode(Image.new("RGBA", (40, 30), (10, 20, 30, 0)), "PNG"),
        "palette.png": encode(Image.new("P", (40, 30), 3), "PNG", transparency=3),
        "cmyk.jpg": encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95),
        "deep.png": encode(Image.fromarray(np.array([[0, 25700, 65535]] * 4, dtype=np.uint16)), "PNG"),
        "exif6.jpg": _exif_jpeg(_marked(40, 20), 6),
        "exif6raw.jpg": _exif_jpeg(_marked(40, 20), 6),
        "exif3.jpg": _exif_jpeg(_marked(40, 20), 3),
        "noann.png": encode(rgb, "PNG"),
        "sized.png": encode(rgb, "PNG"),
        "zero.jpg": b"",
        "text.jpg": b"this is not an image\n",
    }
    jpeg = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    files["truncated.jpg"] = jpeg[: len(jpeg) // 2]
    png = bytearray(encode(Image.effect_noise((64, 64), 50), "PNG"))
    png[len(png) // 2] ^= 0xFF  # a flipped byte: the PNG CRC no longer matches
    files["corrupt.png"] = bytes(png)
    for name, data in files.items():
        (d / name).write_bytes(data)
    (root / "escape.jpg").write_bytes(encode(rgb, "JPEG"))
    names = ["good.png", "gray.png", "rgba.png", "palette.png", "cmyk.jpg", "deep.png", "exif6.jpg",
             "exif6raw.jpg", "exif3.jpg", "noann.png", "sized.png", "zero.jpg", "text.jpg",
             "truncated.jpg", "corrupt.png", "missing.jpg", "../escape.jpg"]
    sizes = {"exif6.jpg": (20, 40), "exif6raw.jpg": (40, 20), "exif3.jpg": (40, 20), "sized.png": (50, 30),
             "deep.png": (3, 4)}
    images = [image_entry(i + 1, n, *sizes.get(n, (40, 30))) for i, n in enumerate(names)]
    images.append({"id": "x", "file_name": "good.png"})  # malformed entry
    anns = [
        ann(1, 1, [5, 5, 10, 10]), ann(2, 1, [5, 5, 0, 3]), ann(3, 1, [5, 5, -3, 3]),
        ann(4, 1, [100, 100, 5, 5]), ann(5, 1, [30, 20, 20, 20]), ann(6, 1, [0, 0, 4, 4], iscrowd=1),
        ann(7, 1, [1, 2, 3]), ann(8, 1, [1, 2, float("nan"), 3]), ann(9, 999, [1, 1, 2, 2]),
        ann(10, 1, [1, 1, 2, 2], category_id="1"), ann(11, 16, [1, 1, 5, 5]),
        {"image_id": 2, "category_id": 2, "bbox": [2, 2, 6, 6]},  # no id: renumbered for COCOeval
        ann(12, 7, [0, 0, 20, 10], 3), ann(13, 5, [1, 1, 30, 20], 2),
    ]
    return d, save_coco(root / "ann.json", images, anns)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return _write_zoo(tmp_path_factory.mktemp("zoo"))


def test_scan_counts_every_problem(zoo):
    report = scan_dataset(*zoo)
    expected = {  # by hand, from _write_zoo
        "image_malformed_entry": 1, "image_outside_folder": 1, "image_missing": 1, "image_unreadable": 4,
        "annotation_malformed": 3, "annotation_unknown_image": 1, "annotation_of_skipped_image": 1,
        "box_degenerate": 2, "box_outside": 1, "box_clipped": 1, "crowd": 1, "size_mismatch": 1,
        "exif_applied": 2, "exif_ignored": 1, "image_converted": 5, "no_annotations": 7,  # images 3, 4, 6, 8, 9, 10, 11
        "annotation_id_fixed": 1,
    }
    assert {k: p.count for k, p in report.problems.items()} == expected
    assert sorted(report.image_ids) == list(range(1, 12))
    unreadable = " ".join(report.problems["image_unreadable"].examples)
    assert "zero.jpg" in unreadable and "text.jpg" in unreadable and "truncated.jpg" in unreadable
    assert report.problems["image_missing"].examples == ["missing.jpg"]
    assert report.num_classes == 4 and report.class_names == ["N/A", "a", "b", "c"]
    assert report.records[7].apply_exif and (report.records[7].width, report.records[7].height) == (20, 40)
    assert not report.records[8].apply_exif and (report.records[8].width, report.records[8].height) == (40, 20)
    assert report.records[1].target["boxes"].tolist() == [[5, 5, 15, 15], [30, 20, 40, 30]]
    summary = report.summary()
    assert "skipped        4  image file cannot be decoded" in summary and "truncated.jpg" in summary


def test_one_warning_then_every_item_loads(zoo):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset(*zoo, train=True, transforms=make_transforms(True, scales=[32, 48], crop=([40], 16, 32)))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert "missing.jpg" in messages[0] and "4  image file cannot be decoded" in messages[0]
    assert len(ds) == 11
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape[0] == 3 and torch.isfinite(image).all()
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


def test_conversions_are_correct(zoo):
    d, _ = zoo
    deep = np.asarray(load_image(d / "deep.png"))
    assert deep[0, :, 0].tolist() == [0, 100, 255]  # 16-bit v -> round(v / 257), not clipped
    assert (deep[..., 0] == deep[..., 1]).all()
    cmyk = np.asarray(load_image(d / "cmyk.jpg"))[10, 10]
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60  # C=0 M=Y=255 K=0 is red
    assert np.asarray(load_image(d / "gray.png"))[0, 0].tolist() == [77, 77, 77]
    assert load_image(d / "palette.png").mode == "RGB"


@pytest.mark.parametrize("name, apply, size, red_at", [
    ("exif6.jpg", True, (20, 40), (16, 3)),  # orientation 6: rotate 90 clockwise, top-left -> top-right
    ("exif3.jpg", True, (40, 20), (36, 16)),  # orientation 3: rotate 180, top-left -> bottom-right
    ("exif6raw.jpg", False, (40, 20), (3, 3)),  # rotation ignored: stored pixels
])
def test_exif_orientation(zoo, name, apply, size, red_at):
    img = load_image(zoo[0] / name, apply_exif=apply)
    assert img.size == size
    r, g, b = img.getpixel(red_at)
    assert r > 200 and g < 60 and b < 60


def test_file_changed_after_scan_is_a_clear_error(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    ds = build_dataset(tmp_path, save_coco(tmp_path / "a.json", [image_entry(1, "a.png")], [ann(1, 1, [1, 1, 5, 5])]),
                       train=False)
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png.*scanned"):
        ds[0]
    (tmp_path / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"a\.png: image file not found"):
        ds[0]


def _fatal_case(tmp_path, case):
    """Write one fatal dataset; returns scan_dataset kwargs."""
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    good = [image_entry(1, "a.png")]
    f = tmp_path / "ann.json"
    kwargs = {"images_dir": tmp_path, "ann_file": f}
    if case == "bad_json":
        f.write_text('{"images": [')
    elif case == "not_utf8":
        f.write_bytes(b'{"images": ["\xff\xfe"]}')
    elif case == "list":
        f.write_text("[]")
    elif case == "no_images":
        f.write_text('{"annotations": []}')
    elif case == "images_not_list":
        f.write_text('{"images": {}, "annotations": []}')
    elif case == "empty":
        save_coco(f, [], [])
    elif case == "category":
        save_coco(f, good, [ann(41, 1, [1, 1, 5, 5], category_id=7)])
        kwargs["num_classes"] = 4
    elif case == "huge_category":
        save_coco(f, good, [ann(1, 1, [1, 1, 5, 5])], [{"id": 10**12, "name": "x"}])
    elif case == "duplicate":
        save_coco(f, good + good, [])
    elif case == "unreadable":
        (tmp_path / "b.jpg").write_bytes(b"")
        save_coco(f, [image_entry(1, "b.jpg")], [])
    elif case == "no_folder":
        save_coco(f, good, [])
        kwargs["images_dir"] = tmp_path / "nope"
    elif case == "num_classes":
        save_coco(f, good, [])
        kwargs["num_classes"] = 0
    elif case == "missing_file":
        kwargs["ann_file"] = tmp_path / "nope.json"
    return kwargs


@pytest.mark.parametrize("case, message", [
    ("bad_json", r"ann\.json: not valid JSON \(line 1"),
    ("not_utf8", r"ann\.json: (cannot read|not valid JSON)"),
    ("list", r"ann\.json: expected a JSON object"),
    ("no_images", r"ann\.json: not a COCO instances file: no 'images'"),
    ("images_not_list", r"ann\.json: 'images' must be a list"),
    ("empty", r"ann\.json: the dataset is empty"),
    ("category", r"ann\.json: cannot train(.|\n)*annotation 41 has category_id 7, num_classes=4"),
    ("huge_category", r"ann\.json: largest category id is 1000000000000"),
    ("duplicate", r"ann\.json: cannot train(.|\n)*id 1 \(a\.png\)"),
    ("unreadable", r"no usable image(.|\n)*b\.jpg"),
    ("no_folder", r"nope: image folder not found"),
    ("num_classes", r"num_classes must be an integer in \[1, 100000\], got 0"),
    ("missing_file", r"nope\.json: annotation file not found"),
])
def test_fatal_problems_are_refused_up_front(tmp_path, case, message):
    with pytest.raises(DatasetError, match=message):
        scan_dataset(**_fatal_case(tmp_path, case))


def test_coco_ground_truth_is_clean(zoo):
    report = scan_dataset(*zoo)
    gt = report.coco_dataset
    assert sorted(i["id"] for i in gt["images"]) == list(range(1, 12))
    ids = [a["id"] for a in gt["annotations"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert all({"area", "iscrowd", "bbox"} <= set(a) for a in gt["annotations"])
    coco = report.coco()
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    json.dumps(gt)  # serialisable, as COCOeval users may save it


def test_header_only_scan_trades_safety_for_speed(zoo):
    """decode=False still skips what has no readable header, but a truncated JPEG gets through
    and fails (clearly, naming the file) only when loaded."""
    report = scan_dataset(*zoo, decode=False)
    assert report.problems["image_unreadable"].count == 2  # zero.jpg, text.jpg
    truncated = next(i for i, r in report.records.items() if r.file.name == "truncated.jpg")
    with pytest.raises(DatasetError, match=r"truncated\.jpg: cannot decode"):
        load_image(report.records[truncated].file)
