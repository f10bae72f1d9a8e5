"""`--data DIR`: each layout, written by the test's own writers, reads back as the COCO records it came from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from detr.config import Config, DataConfig, ModelConfig, TrainConfig
from detr.data.errors import DatasetError
from detr.data.formats import detect_format
from detr.data.loaders import build_datasets, resolve_data

from ..helpers.format_writers import (
    reference,
    save_png,
    voc_xml,
    write_coco2017,
    write_roboflow,
    write_voc,
    write_yolo,
)

WRITERS = {"coco": write_coco2017, "roboflow": write_roboflow, "yolo": write_yolo, "voc": write_voc}


def resolved(root: Path, out: Path, data_format: str | None = None) -> Config:
    cfg = Config(model=ModelConfig(num_classes=None, num_queries=8),  # type: ignore[arg-type]
                 data=DataConfig(data=str(root), data_format=data_format),  # type: ignore[arg-type]
                 train=TrainConfig(output_dir=str(out), device="cpu"))
    return resolve_data(cfg)


def read_back(cfg: Config, split: str) -> tuple[dict, dict]:
    """The written split as {file name: (width, height)} and {(file name, dataset id, name): [xywh, ...]}."""
    d = cfg.data
    coco = json.loads(Path(getattr(d, f"{split}_annotations")).read_text())
    own = {c["id"]: (c["dataset_id"], c["name"]) for c in coco["categories"]}
    files = {i["id"]: Path(i["file_name"]).name for i in coco["images"]}
    sizes = {Path(i["file_name"]).name: (i["width"], i["height"]) for i in coco["images"]}
    boxes: dict = {}
    for a in coco["annotations"]:
        key = (files[a["image_id"]], *own[a["category_id"]])
        boxes.setdefault(key, []).append(a["bbox"])
    for i in coco["images"]:  # file names resolve to images under the images root
        assert (Path(getattr(d, f"{split}_images")) / i["file_name"]).is_file()
    return sizes, boxes


def expected(ref, split: str, ids: dict[int, int]) -> tuple[dict, dict]:
    sizes = {n: (w, h) for n, w, h in ref.images[split]}
    boxes: dict = {}
    for n, c, b in ref.boxes[split]:
        boxes.setdefault((n, ids[c], ref.categories[c]), []).append(b)
    return sizes, boxes


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_reads_back_its_records(tmp_path, fmt):
    ref = reference()
    WRITERS[fmt](tmp_path / "ds", ref)
    assert detect_format(tmp_path / "ds") == fmt
    cfg = resolved(tmp_path / "ds", tmp_path / "run")
    # the dataset's own ids: COCO's as written; YOLO's are indices into names; VOC's the sorted names' order
    own = {"yolo": {c: i for i, c in enumerate(sorted(ref.categories))},
           "voc": {c: sorted(ref.categories.values()).index(n) for c, n in ref.categories.items()}}.get(
        fmt, {c: c for c in ref.categories})
    assert cfg.data.category_ids == sorted(own.values())
    assert cfg.model.num_classes == 3  # contiguous: not max id + 1
    assert cfg.data.class_names == [dict((own[c], n) for c, n in ref.categories.items())[i]
                                    for i in cfg.data.category_ids]
    for split in ("train", "val"):
        sizes, boxes = read_back(cfg, split)
        want_sizes, want_boxes = expected(ref, split, own)
        assert sizes == want_sizes
        assert set(boxes) == set(want_boxes)
        for key, got in boxes.items():
            flat = [v for b in sorted(got) for v in b]
            assert flat == pytest.approx([v for b in sorted(want_boxes[key]) for v in b], abs=1e-6), key
    data = build_datasets(cfg)  # the written files pass the up-front scan
    assert len(data.train) == 2 and len(data.val) == 2


def test_yolo_names_as_dict_and_path(tmp_path):
    ref = reference()
    write_yolo(tmp_path / "ds", ref, names_as_dict=True, with_path=True)
    cfg = resolved(tmp_path / "ds", tmp_path / "run")
    assert cfg.data.class_names == ["cat", "dog", "bird"]
    sizes, boxes = read_back(cfg, "val")
    assert sizes == expected(ref, "val", {1: 0, 7: 1, 1000: 2})[0]


def test_yolo_roboflow_export_layout(tmp_path):
    """Roboflow's YOLO export: train/images, valid/images beside data.yaml, which names them `../train/images`."""
    ref = reference()
    root = write_yolo(tmp_path / "flat", ref)
    ds = tmp_path / "ds"
    for split, folder in (("train", "train"), ("val", "valid")):
        for kind in ("images", "labels"):
            (ds / folder).mkdir(parents=True, exist_ok=True)
            (root / kind / split).rename(ds / folder / kind)
    (ds / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 3\nnames: [cat, dog, bird]\n")
    cfg = resolved(ds, tmp_path / "run")
    assert cfg.data.class_names == ["cat", "dog", "bird"]
    for split in ("train", "val"):
        (sizes, boxes), (want_sizes, want_boxes) = read_back(cfg, split), expected(ref, split, {1: 0, 7: 1, 1000: 2})
        assert sizes == want_sizes and set(boxes) == set(want_boxes)
        for key, got in boxes.items():
            flat = [v for b in sorted(got) for v in b]
            assert flat == pytest.approx([v for b in sorted(want_boxes[key]) for v in b], abs=1e-6), key


def test_yolo_list_file_split(tmp_path):
    ref = reference()
    root = write_yolo(tmp_path / "ds", ref)
    (root / "train.txt").write_text("./images/train/a.png\n./images/train/b.png\n")
    (root / "data.yaml").write_text("train: train.txt\nval: images/val\nnames: [cat, dog, bird]\n")
    cfg = resolved(root, tmp_path / "run")
    assert read_back(cfg, "train")[0] == {"a.png": (64, 48), "b.png": (80, 64)}


def test_roboflow_super_category_dropped(tmp_path, caplog):
    write_roboflow(tmp_path / "ds", reference(ids=(1, 2, 3)), super_name="my-pets")
    with caplog.at_level(logging.INFO, logger="detr"):
        cfg = resolved(tmp_path / "ds", tmp_path / "run")
    assert cfg.data.category_ids == [1, 2, 3] and cfg.data.class_names == ["cat", "dog", "bird"]
    assert any("my-pets" in r.message and "dropped" in r.message for r in caplog.records)


def test_data_format_forces_a_layout(tmp_path):
    root = write_yolo(tmp_path / "ds", reference())
    write_voc(root, reference())  # both layouts in one folder
    with pytest.raises(DatasetError, match="several layouts.*--data_format"):
        detect_format(root)
    cfg = resolved(root, tmp_path / "run", data_format="voc")
    assert cfg.data.data_format == "voc" and cfg.data.class_names == ["bird", "cat", "dog"]


def test_unknown_layout_names_what_was_looked_for(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DatasetError, match="no known dataset layout.*data.yaml"):
        resolved(tmp_path / "ds", tmp_path / "run")


def _yolo_error(tmp_path, line: str) -> str:
    root = write_yolo(tmp_path / "ds", reference())
    label = root / "labels" / "train" / "b.txt"
    label.write_text(label.read_text() + line + "\n")
    with pytest.raises(DatasetError) as e:
        resolved(root, tmp_path / "run")
    assert f"{label}:4" in str(e.value)
    return str(e.value)


def test_yolo_class_outside_names(tmp_path):
    assert "class index outside names" in _yolo_error(tmp_path, "3 0.5 0.5 0.1 0.1")


def test_yolo_coordinates_outside_unit_range(tmp_path):
    assert "outside [0, 1]" in _yolo_error(tmp_path, "0 12 20 5 6")


def test_yolo_zero_area_and_orphan_label_warned(tmp_path, caplog):
    root = write_yolo(tmp_path / "ds", reference())
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0 0.2\n1 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "val" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "labels" / "val" / "d.txt").unlink()  # an image without a label file has no boxes
    with caplog.at_level(logging.WARNING, logger="detr"):
        cfg = resolved(root, tmp_path / "run")
    text = "\n".join(r.message for r in caplog.records)
    assert f"{root / 'labels' / 'train' / 'a.txt'}:1" in text and "zero area" in text
    assert str(root / "labels" / "val" / "ghost.txt") in text
    assert sum(len(v) for k, v in read_back(cfg, "train")[1].items() if k[0] == "a.png") == 1
    sizes, boxes = read_back(cfg, "val")
    assert "d.png" in sizes and not any(k[0] == "d.png" for k in boxes)


def test_voc_malformed_xml_named(tmp_path):
    root = write_voc(tmp_path / "ds", reference())
    bad = root / "Annotations" / "c.xml"
    bad.write_text("<annotation><object><name>cat</name>")
    with pytest.raises(DatasetError, match=f"malformed XML.*{bad}"):
        resolved(root, tmp_path / "run")


def test_voc_zero_area_box_named_and_difficult_is_crowd(tmp_path, caplog):
    root = write_voc(tmp_path / "ds", reference(), difficult={("a.png", 7)})
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", 80, 64, [("cat", [10, 10, 0, 5], 0),
                                                                           ("dog", [4, 4, 10, 10], 0)]))
    with caplog.at_level(logging.WARNING, logger="detr"):
        cfg = resolved(root, tmp_path / "run")
    assert "zero area" in caplog.text and str(root / "Annotations" / "b.xml") in caplog.text
    coco = json.loads(Path(cfg.data.train_annotations).read_text())
    dog = cfg.data.class_names.index("dog")
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["category_id"] == dog and crowd[0]["image_id"] == 1


@pytest.mark.parametrize("fmt,remove", [("coco", "annotations/instances_val2017.json"),
                                        ("roboflow", "valid/_annotations.coco.json"),
                                        ("voc", "ImageSets/Main/val.txt")])
def test_missing_split_named(tmp_path, fmt, remove):
    root = WRITERS[fmt](tmp_path / "ds", reference())
    (root / remove).unlink()
    with pytest.raises(DatasetError, match="missing split"):
        resolved(root, tmp_path / "run", data_format=fmt)


def test_yolo_missing_split_named(tmp_path):
    root = write_yolo(tmp_path / "ds", reference())
    (root / "data.yaml").write_text("train: images/train\nval: images/nowhere\nnames: [cat, dog, bird]\n")
    with pytest.raises(DatasetError, match="missing split.*images/nowhere"):
        resolved(root, tmp_path / "run")


def test_unreadable_image_named_by_the_scan(tmp_path):
    root = write_roboflow(tmp_path / "ds", reference())
    (root / "train" / "b.png").write_bytes(b"not a png")
    cfg = resolved(root, tmp_path / "run")
    with pytest.warns(UserWarning, match="b.png"):
        data = build_datasets(cfg)
    assert len(data.train) == 1


def test_save_png_writer_sizes(tmp_path):  # the writers' own images are what the reference says
    from PIL import Image

    save_png(tmp_path / "x.png", 33, 21)
    assert Image.open(tmp_path / "x.png").size == (33, 21)


def test_a_given_mapping_refuses_unknown_classes(tmp_path):
    from detr.data.formats import prepare_data

    root = write_coco2017(tmp_path / "ds", reference(ids=(1, 7, 1000)))
    prepared = prepare_data(root, tmp_path / "out", category_ids=[1000, 7, 1, 3])  # a checkpoint's order
    coco = json.loads(Path(prepared.paths["train_annotations"]).read_text())
    assert {a["category_id"] for a in coco["annotations"]} == {0, 1, 2}
    assert prepared.class_names == ["bird", "dog", "cat", "class_3"]
    with pytest.raises(DatasetError, match=r"category id\(s\) \[1000\] are not among"):
        prepare_data(root, tmp_path / "out2", category_ids=[1, 7])


def test_pitfalls_said_with_their_flags(caplog):
    from detr.data.formats import Geometry
    from detr.data.formats.report import log_classes, log_pitfalls

    # image 1: 640x480 with 5 boxes; image 2: 100x2000 with one 3x3 box. At scale 800 / max 1333: image 1 grows
    # by 800/480, image 2 by min(800/100, 1333/2000) = 0.6665; a box is small when min(w, h) * s < 32.
    images = [{"id": 1, "width": 640, "height": 480}, {"id": 2, "width": 100, "height": 2000}]
    sides = [30, 19, 20, 5, 100]
    anns = [{"image_id": 1, "category_id": 0, "bbox": [0, 0, s, s]} for s in sides]
    anns.append({"image_id": 2, "category_id": 0, "bbox": [0, 0, 3, 3]})
    small = sum(min(a["bbox"][2:]) * min(800 / min(i["width"], i["height"]), 1333 / max(i["width"], i["height"]))
                < 32 for a in anns for i in images if i["id"] == a["image_id"])
    train = {"images": images, "annotations": anns}
    with caplog.at_level(logging.INFO, logger="detr"):
        log_pitfalls("src", train, Geometry(num_queries=4, stride=32, scales=[480, 800], max_size=1333))
        log_classes("src", [3, 9], ["a", "b"], train, {"images": [], "annotations": []})
    text = caplog.text
    assert "1 training image(s) hold more boxes than --num_queries 4 (the most: 5)" in text
    assert f"{small} of 6 training boxes are smaller than the backbone's output stride (32 px)" in text
    assert "--scales" in text and "--dilation" in text
    assert "no training boxes for class(es) b" in text
    assert "fewer than 10 training boxes for a (6)" in text
    assert "the val set has no boxes of a" in text
