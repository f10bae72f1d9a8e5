"""Per-class diagnostics: per-class AP against pycocotools run per class, the confusion matrix against a count
written here, the pictures, `detr eval` and training writing them, and `detr plot` with per-class AP."""

from __future__ import annotations

import contextlib
import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr.cli.eval import main as eval_command
from detr.cli.plot import main as plot_command
from detr.evaluation.coco_eval import bbox_cocoeval
from detr.evaluation.data_picture import write_data_picture
from detr.evaluation.diagnostics import confusion_matrix, per_class_ap, write_diagnostics

from ..helpers.train import config, tiny_data

CATS = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}, {"id": 9, "name": "none"}]


def synthetic(seed: int = 0, num_images: int = 12) -> tuple[COCO, list[dict]]:
    """A ground truth of classes 1, 3 and 7 (9 has no boxes, one box is a crowd) and random detections:
    moved copies of the boxes with a random class and score, plus random boxes."""
    rng = random.Random(seed)
    images, anns, dets = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 160})
        for _ in range(rng.randint(0, 5)):
            w, h = rng.uniform(10, 80), rng.uniform(10, 60)
            box = [rng.uniform(0, 200 - w), rng.uniform(0, 160 - h), w, h]
            cat = rng.choice([1, 3, 7])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": box, "area": w * h,
                         "iscrowd": int(len(anns) == 3)})
            for _ in range(rng.randint(0, 2)):
                moved = [box[0] + rng.uniform(-8, 8), box[1] + rng.uniform(-8, 8), w * rng.uniform(0.7, 1.3),
                         h * rng.uniform(0.7, 1.3)]
                label = cat if rng.random() < 0.7 else rng.choice([1, 3, 7])
                dets.append({"image_id": i, "category_id": label, "bbox": moved, "score": rng.random()})
        for _ in range(rng.randint(0, 3)):
            dets.append({"image_id": i, "category_id": rng.choice([1, 3, 7]), "score": rng.random(),
                         "bbox": [rng.uniform(0, 150), rng.uniform(0, 120), rng.uniform(5, 50), rng.uniform(5, 40)]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": CATS}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, dets


def pycocotools_per_class(gt: COCO, dets: list[dict], cat: int) -> tuple[float, float]:
    """AP and AP50 of one class, straight from pycocotools."""
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(gt, gt.loadRes(dets), "bbox")
        e.params.catIds = [cat]
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats[0], e.stats[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_ap_equals_pycocotools_per_class(seed):
    gt, dets = synthetic(seed)
    coco_eval, _ = bbox_cocoeval(gt, dets, sorted(gt.imgs))
    records = per_class_ap(coco_eval)
    assert [r["id"] for r in records] == [1, 3, 7, 9] and records[1]["name"] == "dog"
    for r in records:
        ap, ap50 = pycocotools_per_class(gt, dets, r["id"])
        if r["id"] == 9:  # no ground truth: pycocotools says -1
            assert ap == ap50 == -1 and r["AP"] is None and r["AP50"] is None and r["num_gt"] == 0
            continue
        assert 0 < ap < 1 and r["AP"] == pytest.approx(ap, abs=1e-12) and r["AP50"] == pytest.approx(ap50, abs=1e-12)
        crowd = sum(a["iscrowd"] for a in gt.dataset["annotations"] if a["category_id"] == r["id"])
        assert r["num_gt"] == sum(a["category_id"] == r["id"] for a in gt.dataset["annotations"]) - crowd


def brute_force_confusion(gt: COCO, dets: list[dict], cats: list[int], threshold: float) -> np.ndarray:
    """The rule counted with plain loops: by decreasing score, each detection takes the free non-crowd gt box
    of largest IoU >= 0.5 of any class; rows gt class, columns predicted class, last = background."""
    def iou(a, b):
        ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
        inter = ix * iy
        return inter / (a[2] * a[3] + b[2] * b[3] - inter)

    k = len(cats)
    counts = [[0] * (k + 1) for _ in range(k + 1)]
    for image_id in gt.imgs:
        boxes = [a for a in gt.dataset["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        free = [True] * len(boxes)
        mine = [d for d in dets if d["image_id"] == image_id and d["score"] >= threshold]
        for d in sorted(mine, key=lambda d: d["score"], reverse=True):
            best, best_iou = None, 0.5
            for j, a in enumerate(boxes):
                v = iou(d["bbox"], a["bbox"])
                if free[j] and v >= best_iou and (best is None or v > best_iou):
                    best, best_iou = j, v
            column = cats.index(d["category_id"])
            if best is None:
                counts[k][column] += 1
            else:
                free[best] = False
                counts[cats.index(boxes[best]["category_id"])][column] += 1
        for j, a in enumerate(boxes):
            if free[j]:
                counts[cats.index(a["category_id"])][k] += 1
    return np.array(counts)


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, 0.0)])
def test_confusion_matrix_equals_a_brute_force_count(seed, threshold):
    gt, dets = synthetic(seed)
    cats = [1, 3, 7, 9]
    matrix = confusion_matrix(gt, dets, sorted(gt.imgs), cats, threshold)
    expected = brute_force_confusion(gt, dets, cats, threshold)
    assert matrix.tolist() == expected.tolist()
    assert matrix[:4, :4].sum() > 0 and matrix[4].sum() > 0 and matrix[:, 4].sum() > 0  # all kinds of cells


def test_confusion_matrix_of_a_hand_made_image():
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": CATS[:2], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [80, 0, 10, 10], "area": 100, "iscrowd": 0}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # right
            {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.8},  # duplicate: background
            {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 9], "score": 0.7},  # dog called cat
            {"image_id": 1, "category_id": 3, "bbox": [20, 20, 10, 10], "score": 0.95},  # nothing there
            {"image_id": 1, "category_id": 3, "bbox": [80, 0, 10, 10], "score": 0.2}]  # below the threshold
    matrix = confusion_matrix(gt, dets, [1], [1, 3], 0.5)
    assert matrix.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]


def valid_png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_write_diagnostics_files(tmp_path):
    gt, dets = synthetic(0)
    coco_eval, _ = bbox_cocoeval(gt, dets, sorted(gt.imgs))
    records = write_diagnostics(tmp_path / "eval", coco_eval, dets, score_threshold=0.4)
    assert json.loads((tmp_path / "eval" / "per_class.json").read_text()) == records
    saved = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert saved["score_threshold"] == 0.4 and saved["iou_threshold"] == 0.5
    assert [c["name"] for c in saved["classes"]] == ["cat", "dog", "bird", "none", "background"]
    assert saved["matrix"] == brute_force_confusion(gt, dets, [1, 3, 7, 9], 0.4).tolist()
    for name in ("pr_curves.png", "confusion_matrix.png"):
        w, h = valid_png(tmp_path / "eval" / name)
        assert w > 300 and h > 300


def test_data_picture_leaves_the_random_state_alone(tmp_path):
    from detr.data.loaders import build_datasets

    cfg = config(tiny_data(tmp_path / "data", num_train=3, num_val=2), tmp_path / "run")
    train = build_datasets(cfg, with_train=True).train
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    assert write_data_picture(train, tmp_path / "data.png", num_images=2) == tmp_path / "data.png"
    after = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    assert after == (pytest.approx(torch.rand(3)), random.random(), np.random.rand())
    assert valid_png(tmp_path / "data.png")[0] > 500


def test_data_picture_of_panoptic_data(tmp_path, caplog):
    from detr.cli.flags import build_parser, config_from_args
    from detr.data import make_demo_dataset
    from detr.data.loaders import build_datasets

    from ..helpers.train import TINY_FLAGS

    p = make_demo_dataset(tmp_path / "pan", num_train=2, num_val=1, image_size=64, seed=1, panoptic=True)
    flags = [f"--{s}_{kind}={p[f'{s}_{key}']}" for s in ("train", "val") for kind, key in
             (("images", "images"), ("annotations", "panoptic_annotations"), ("panoptic", "panoptic"))]
    cfg = config_from_args(build_parser("test", "").parse_args([*TINY_FLAGS, *flags]))
    train = build_datasets(cfg).train
    assert write_data_picture(train, tmp_path / "data.png", num_images=2) == tmp_path / "data.png"
    assert "could not draw" not in caplog.text and valid_png(tmp_path / "data.png")


def test_a_failing_picture_warns_and_returns_none(tmp_path, caplog):
    assert write_data_picture(object(), tmp_path / "data.png") is None  # type: ignore[arg-type]
    assert "could not draw" in caplog.text and not (tmp_path / "data.png").exists()


@pytest.mark.slow
def test_training_and_detr_eval_write_the_diagnostics(tmp_path):
    from detr.training.train import train

    data = tiny_data(tmp_path / "data", num_train=4, num_val=3)
    run = tmp_path / "run"
    train(config(data, run, ["--epochs", "1"]), progress=False)
    valid_png(run / "data.png")
    log = json.loads((run / "log.txt").read_text().splitlines()[-1])
    assert log["test_per_class_ap"] == json.loads((run / "eval" / "per_class.json").read_text())
    ids = sorted(a["category_id"] for a in json.loads(open(data["val_annotations"]).read())["annotations"])
    assert sum(r["num_gt"] for r in log["test_per_class_ap"]) == len(ids)

    out = tmp_path / "evaluated"
    assert eval_command(["--weights", str(run / "checkpoint.pth"), "--device", "cpu", "--num_workers", "0",
                         "--output_dir", str(out)]) == 0
    for name in ("pr_curves.png", "confusion_matrix.png"):
        valid_png(out / "eval" / name)
    records = json.loads((out / "eval" / "per_class.json").read_text())
    assert records == log["test_per_class_ap"]  # the same weights on the same data
    matrix = json.loads((out / "eval" / "confusion_matrix.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) >= len(ids)  # every gt box lands in a row once, detections add to it


def test_detr_plot_draws_per_class_ap_of_two_runs(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    (b / "eval").mkdir(parents=True)
    a.mkdir()
    rec = [{"id": 1, "name": "cat", "AP": 0.5, "AP50": 0.7, "num_gt": 3},
           {"id": 2, "name": "dog", "AP": None, "AP50": None, "num_gt": 0}]
    lines = [{"epoch": e, "train_loss": 2.0 - e, "test_coco_eval_bbox": [0.1 * e] * 12,
              "test_per_class_ap": rec} for e in range(2)]
    (a / "log.txt").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (b / "log.txt").write_text(json.dumps(lines[0]) + "\n")
    (b / "eval" / "per_class.json").write_text(json.dumps([{**rec[0], "AP": 0.2}]))
    out = tmp_path / "curves.png"
    assert plot_command([str(a), str(b), "--output", str(out)]) == 0
    valid_png(out)
    assert valid_png(tmp_path / "curves_per_class.png")[1] > 300
    assert "curves_per_class.png" in capsys.readouterr().out


def test_confusion_matrix_equals_supervision_on_unambiguous_scenes():
    """Objects on a grid, each with at most one detection near it and some detections on empty cells: every
    matching rule agrees there, so supervision's ConfusionMatrix is an independent count."""
    from supervision.metrics.detection import ConfusionMatrix

    rng = np.random.default_rng(3)
    cats, images, anns, dets = [1, 3, 7], [], [], []
    expected = np.zeros((4, 4), dtype=np.int64)
    for image_id in range(1, 9):
        images.append({"id": image_id, "width": 400, "height": 400})
        gt_rows, det_rows = [], []
        for cell in range(16):  # 100-px cells, objects of 40-60 px: no box overlaps a neighbour
            x, y = 100 * (cell % 4) + 20, 100 * (cell // 4) + 20
            w, h = rng.uniform(40, 60, 2)
            kind = rng.integers(4)  # 0 empty, 1 object alone, 2 object + close detection, 3 far detection only
            if kind in (1, 2):
                cat = int(rng.choice(cats))
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                             "area": w * h, "iscrowd": 0})
                gt_rows.append([x, y, x + w, y + h, cats.index(cat)])
            if kind in (2, 3):
                shift = rng.uniform(-3, 3, 2) if kind == 2 else np.array([0.0, 0.0])
                dw, dh = (w, h) if kind == 2 else (10.0, 10.0)
                label, score = int(rng.choice(cats)), float(rng.uniform(0, 1))
                box = [x + shift[0], y + shift[1], dw, dh]
                if kind == 3:
                    box = [x + 65, y + 65, 10.0, 10.0]  # in the cell's empty corner
                dets.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})
                det_rows.append([box[0], box[1], box[0] + box[2], box[1] + box[3], cats.index(label), score])
        expected += ConfusionMatrix.evaluate_detection_batch(
            np.array(det_rows, dtype=np.float32).reshape(-1, 6), np.array(gt_rows, dtype=np.float32).reshape(-1, 5),
            num_classes=3, conf_threshold=0.5, iou_threshold=0.5)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": CATS[:3]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    matrix = confusion_matrix(gt, dets, sorted(gt.imgs), cats, 0.5)
    assert matrix.tolist() == expected.tolist()
    assert np.diag(matrix)[:3].sum() > 0 and matrix[:3, :3].sum() > np.trace(matrix[:3, :3])  # right and wrong
    assert matrix[3].sum() > 0 and matrix[:, 3].sum() > 0
