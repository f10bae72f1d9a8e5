"""Panoptic quality against hand-computed cases and torchmetrics' independent PanopticQuality; mask AP
against pycocotools run directly.

torchmetrics and panopticapi (whose definition `detr.panoptic_quality` follows) differ in conventions;
the comparison makes the inputs mean the same thing to both:
1. Input: torchmetrics takes (category, instance) per pixel and merges every pixel of a stuff category
   into one segment; panopticapi takes segment ids + segments_info. -> at most one segment per stuff
   category per image (in ground truth and prediction).
2. VOID: torchmetrics' void is any category outside things and stuff, in either map; panopticapi's is
   id 0. For ground truth both leave VOID pixels out of the union and ignore predictions mostly on
   VOID. For predictions they differ: torchmetrics also removes the predicted-void pixels of a ground
   truth segment from its union, and does not count as missed a ground truth segment mostly left void
   by the prediction; panopticapi does neither. -> predicted VOID is given to torchmetrics as an extra
   stuff category (DUMMY) that no ground truth has, and DUMMY is left out of the comparison.
3. Crowd: torchmetrics has none. panopticapi never matches a crowd segment, does not count it as
   missed, and ignores an unmatched prediction of the crowd's category that lies mostly on VOID plus
   the crowd. -> crowd regions are VOID for torchmetrics; inside a crowd region the prediction is VOID
   or one segment of the crowd's category (which no other ground-truth segment of that image has), so
   that no other prediction touches it and both rules give the same counts.
4. Averages: torchmetrics' mean over no category is NaN, panopticapi's a ZeroDivisionError; ours 0.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import detr
from detr.data import DatasetError, coco_mask_results
from detr.evaluation.coco_eval import coco_mask_eval

THINGS, STUFF, DUMMY = (1, 2, 3), (4, 5), 6
CATEGORIES = [{"id": c, "name": f"c{c}", "isthing": int(c in THINGS)} for c in THINGS + STUFF]


def _png(path, ids: np.ndarray) -> None:
    """Written here, not with detr's writer: id = R + 256 G + 256^2 B."""
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(path)


def _segments(ids: np.ndarray, cats: dict[int, int], crowd: set[int] = frozenset()) -> list[dict]:
    out = []
    for sid in np.unique(ids).tolist():
        if sid:
            out.append({"id": sid, "category_id": cats[sid], "iscrowd": int(sid in crowd), "area": int((ids == sid).sum())})
    return out


def _write(tmp_path, images: list[tuple]) -> tuple:
    """images: (gt_ids, gt_cats, pred_ids, pred_cats[, crowd ids]) -> the four arguments of panoptic_quality."""
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    gt_anns, pred_anns = [], []
    for i, (gt, gt_cats, pred, pred_cats, *crowd) in enumerate(images):
        _png(tmp_path / "gt" / f"{i}.png", gt)
        _png(tmp_path / "pred" / f"{i}.png", pred)
        gt_anns.append({"image_id": i, "file_name": f"{i}.png",
                        "segments_info": _segments(gt, gt_cats, crowd[0] if crowd else set())})
        pred_anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": _segments(pred, pred_cats)})
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": CATEGORIES}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
    return tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json", tmp_path / "pred"


def _base() -> tuple[np.ndarray, dict[int, int]]:
    """4 x 10: a thing (id 70000, category 1) in columns 0-2, stuff (id 300, category 4) elsewhere."""
    gt = np.full((4, 10), 300, dtype=np.int64)
    gt[:, :3] = 70000
    return gt, {70000: 1, 300: 4}


def test_perfect_prediction_is_one(tmp_path):
    gt, cats = _base()
    r = detr.panoptic_quality(*_write(tmp_path, [(gt, cats, gt * 3, {k * 3: v for k, v in cats.items()})]), workers=1)
    assert r["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert r["Things"]["n"] == 1 and r["Stuff"]["n"] == 1 and r["Things"]["pq"] == r["Stuff"]["pq"] == 1.0
    assert r["per_class"][1] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    assert r["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # absent category: listed, not averaged


def test_one_false_positive(tmp_path):
    gt, cats = _base()
    pred = gt.copy()
    pred[0, 6:10] = 9  # a thing of category 1 carved out of the stuff (4 of its 28 pixels)
    r = detr.panoptic_quality(*_write(tmp_path, [(gt, cats, pred, {**cats, 9: 1})]), workers=1)
    # category 1: TP IoU 1, one FP -> PQ = 1 / (1 + 0.5); category 4: TP with IoU 24/28, RQ 1
    assert r["per_class"][1] == pytest.approx({"pq": 2 / 3, "sq": 1.0, "rq": 2 / 3}, abs=1e-12)
    assert r["per_class"][4] == pytest.approx({"pq": 24 / 28, "sq": 24 / 28, "rq": 1.0}, abs=1e-12)
    assert r["All"]["pq"] == pytest.approx((2 / 3 + 24 / 28) / 2, abs=1e-12)
    assert r["Things"]["pq"] == pytest.approx(2 / 3, abs=1e-12) and r["Stuff"]["pq"] == pytest.approx(6 / 7)


@pytest.mark.parametrize("cut, expected", [(2, (4 / 9, 2 / 3, 2 / 3)),  # IoU 8/12 > 0.5: a match and a FP
                                           (1.5, (0.0, 0.0, 0.0))])  # IoU 6/12 = 0.5: no match, 1 FN + 2 FP
def test_split_segment(tmp_path, cut, expected):
    gt, cats = _base()
    pred = gt.copy()
    if cut == 2:
        pred[:, 2] = 8  # columns 0-1 keep the id (8 px), column 2 a second segment (4 px)
    else:
        pred[:2, :3] = 8  # two halves of 6 px
    r = detr.panoptic_quality(*_write(tmp_path, [(gt, cats, pred, {**cats, 8: 1})]), workers=1)
    assert tuple(r["per_class"][1][k] for k in ("pq", "sq", "rq")) == pytest.approx(expected, abs=1e-12)
    assert r["per_class"][4]["pq"] == 1.0


def test_void_and_crowd_by_hand(tmp_path):
    # ground truth 4 x 10: thing A (cat 1) cols 0-1, VOID cols 2-3, crowd K (cat 1) cols 4-5, stuff (cat 4) 6-9
    gt = np.zeros((4, 10), dtype=np.int64)
    gt[:, :2], gt[:, 4:6], gt[:, 6:] = 1, 2, 3
    cats = {1: 1, 2: 1, 3: 4}
    pred = np.full((4, 10), 30, dtype=np.int64)  # stuff cat 4 everywhere else
    pred[:, :3] = 10  # A plus a VOID column: the VOID pixels leave the union -> IoU 8/8
    pred[:, 3] = 11  # cat 2 entirely on VOID: ignored
    pred[:, 4] = 12  # cat 1 on the crowd of cat 1 and 1 px of stuff: 4/5 ignored -> not a FP
    pred[0, 6] = 12
    pred[:, 5] = 13  # cat 3 on the crowd of cat 1: the crowd only excuses its own category -> FP
    pred_cats = {10: 1, 11: 2, 12: 1, 13: 3, 30: 4}
    r = detr.panoptic_quality(*_write(tmp_path, [(gt, cats, pred, pred_cats, {2})]), workers=1)
    pc = r["per_class"]
    assert pc[1] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}  # the crowd is not missed
    assert pc[2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert pc[3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # one FP
    assert pc[4] == pytest.approx({"pq": 15 / 16, "sq": 15 / 16, "rq": 1.0}, abs=1e-12)  # 15 of its 16 px
    assert r["All"]["n"] == 3 and r["Things"]["n"] == 2  # categories 1, 3, 4 occur; 2 does not


def _rect(rng, h, w) -> tuple[slice, slice]:
    y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
    return slice(y, y + int(rng.integers(2, h // 2))), slice(x, x + int(rng.integers(2, w // 2)))


def _random_image(rng, pred_void: bool, h=24, w=32) -> tuple:
    """(gt ids, gt cats, pred ids, pred cats, crowd ids) following conventions 1-3 of the module docstring."""
    fresh = iter(rng.permutation(np.arange(1, 2**24 - 1, 4099))[:200].tolist())  # ids in all three channels
    gt = np.zeros((h, w), dtype=np.int64)
    cats: dict[int, int] = {}
    cut = int(rng.integers(4, w - 4))
    for cols, cat in ((slice(0, cut), 4), (slice(cut, w), 5)):
        gt[:, cols] = sid = next(fresh)
        cats[sid] = cat
    with_crowd, crowd_cat = rng.random() < 0.7, int(rng.choice(THINGS))
    thing_cats = [c for c in THINGS if c != crowd_cat] if with_crowd else list(THINGS)
    for _ in range(int(rng.integers(2, 6))):
        gt[_rect(rng, h, w)] = sid = next(fresh)
        cats[sid] = int(rng.choice(thing_cats))
    crowd: set[int] = set()
    if with_crowd:  # a crowd of a category that no other segment of the image has
        gt[_rect(rng, h, w)] = sid = next(fresh)
        cats[sid], crowd = crowd_cat, {sid}
    gt[_rect(rng, h, w)] = 0  # VOID
    # prediction: the ground truth shifted, relabelled, split and added to
    pred = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    relabel = {sid: next(fresh) for sid in np.unique(pred).tolist() if sid}
    pred_cats = {relabel[s]: cats[s] for s in relabel}
    pred = np.vectorize(lambda v: relabel.get(v, 0))(pred) if relabel else pred
    for sid in list(pred_cats):
        if sid in pred and pred_cats[sid] in THINGS and rng.random() < 0.3:
            pred_cats[sid] = int(rng.choice(THINGS))  # maybe a wrong class
    for _ in range(int(rng.integers(0, 3))):
        pred[_rect(rng, h, w)] = sid = next(fresh)
        pred_cats[sid] = int(rng.choice([1, 2, 3]))
    victim = int(rng.choice([s for s in np.unique(pred).tolist() if s]))
    if pred_cats[victim] in THINGS:  # split one thing segment in two
        ys, xs = np.nonzero(pred == victim)
        pred[ys[xs > np.median(xs)], xs[xs > np.median(xs)]] = sid = next(fresh)
        pred_cats[sid] = pred_cats[victim]
    for stuff in STUFF:  # one predicted segment per stuff category (convention 1)
        same = [s for s, c in pred_cats.items() if c == stuff and s in pred]
        for s in same[1:]:
            pred[pred == s] = same[0]
    if crowd:  # inside the crowd: one segment of its category, and maybe VOID (convention 3)
        pred[gt == next(iter(crowd))] = sid = next(fresh)
        pred_cats[sid] = crowd_cat
    if pred_void:
        pred[_rect(rng, h, w)] = 0
    else:  # no VOID left: what the shift uncovered joins the stuff of category 4
        stuff4 = [s for s, c in pred_cats.items() if c == 4 and (pred == s).any()]
        pred[pred == 0] = sid = stuff4[0] if stuff4 else next(fresh)
        pred_cats[sid] = 4
    pred_cats = {s: c for s, c in pred_cats.items() if (pred == s).any()}
    return gt, cats, pred, pred_cats, crowd


def _pairs_map(ids: np.ndarray, cats: dict[int, int], void_cat: int, crowd: set[int] = frozenset()) -> torch.Tensor:
    """[H, W, 2] (category, instance) for torchmetrics; VOID and crowd pixels get `void_cat`."""
    cat = np.vectorize(lambda v: void_cat if v == 0 or v in crowd else cats[v])(ids)
    instance = np.unique(ids, return_inverse=True)[1].reshape(ids.shape)  # one instance id per segment
    return torch.from_numpy(np.stack([cat, instance], axis=-1))


def _torchmetrics_stats(images) -> dict[int, tuple[float, int, int, int]]:
    from torchmetrics.detection import PanopticQuality

    metric = PanopticQuality(things=set(THINGS), stuffs={*STUFF, DUMMY})
    for gt, cats, pred, pred_cats, crowd in images:
        metric.update(_pairs_map(pred, pred_cats, DUMMY)[None], _pairs_map(gt, cats, 0, crowd)[None])
    index = {c: i for i, c in enumerate([*THINGS, *STUFF, DUMMY])}  # its order: things, then stuff, sorted
    return {c: (float(metric.iou_sum[i]), int(metric.true_positives[i]), int(metric.false_positives[i]),
                int(metric.false_negatives[i])) for c, i in index.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics_with_void_and_crowd(tmp_path, seed):
    rng = np.random.default_rng(seed)
    images = [_random_image(rng, pred_void=True) for _ in range(25)]
    assert sum(any((im[0] == c).any() for c in im[4]) for im in images) >= 10  # crowds
    assert all((im[0] == 0).any() and (im[2] == 0).any() for im in images)  # VOID in both
    r = detr.panoptic_quality(*_write(tmp_path, images), workers=1)
    stats = _torchmetrics_stats(images)
    occurring = []
    for cat in THINGS + STUFF:
        iou, tp, fp, fn = stats[cat]
        den = tp + fp / 2 + fn / 2
        expected = {"pq": iou / den if den else 0.0, "sq": iou / tp if tp else 0.0, "rq": tp / den if den else 0.0}
        assert r["per_class"][cat]["rq"] == pytest.approx(expected["rq"], abs=1e-12), cat  # the same counts
        # torchmetrics divides in float32 (then sums in float64): IoUs agree to float32 precision
        assert r["per_class"][cat] == pytest.approx(expected, rel=1e-6, abs=1e-12), cat
        if tp + fp + fn:
            occurring.append(cat)
    assert 0.1 < r["All"]["pq"] < 0.9  # neither trivial nor empty
    assert r["All"]["n"] == len(occurring) == 5
    for key in ("pq", "sq", "rq"):
        assert r["All"][key] == pytest.approx(np.mean([r["per_class"][c][key] for c in occurring]), abs=1e-12)
    assert r["Things"]["n"] == 3 and r["Stuff"]["n"] == 2


def test_averages_agree_with_torchmetrics_without_predicted_void(tmp_path):
    from torchmetrics.detection import PanopticQuality

    rng = np.random.default_rng(5)
    images = [_random_image(rng, pred_void=False) for _ in range(20)]
    r = detr.panoptic_quality(*_write(tmp_path, images), workers=1)
    metric = PanopticQuality(things=set(THINGS), stuffs=set(STUFF), return_sq_and_rq=True)
    for gt, cats, pred, pred_cats, crowd in images:
        metric.update(_pairs_map(pred, pred_cats, 0)[None], _pairs_map(gt, cats, 0, crowd)[None])
    pq, sq, rq = metric.compute().tolist()
    assert (r["All"]["pq"], r["All"]["sq"], r["All"]["rq"]) == pytest.approx((pq, sq, rq), rel=1e-6)
    assert 0.1 < pq < 0.9


def test_processes_give_the_in_process_result(tmp_path):
    rng = np.random.default_rng(7)
    args = _write(tmp_path, [_random_image(rng, pred_void=True) for _ in range(6)])
    one = detr.panoptic_quality(*args, workers=1)
    two = detr.panoptic_quality(*args, workers=2)  # IoU sums in another order: equal to rounding
    for key in ("All", "Things", "Stuff", *[("per_class", c) for c in one["per_class"]]):
        a, b = (one[key[0]][key[1]], two[key[0]][key[1]]) if isinstance(key, tuple) else (one[key], two[key])
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
    assert detr.panoptic_quality(json.loads(args[0].read_text()), args[1], json.loads(args[2].read_text()),
                                 args[3], workers=1) == one  # loaded dicts work as files


@pytest.mark.parametrize("case, message", [
    ("png_id_not_in_json", "in the PNG but not in its segments_info"),
    ("json_id_not_in_png", "in segments_info but not in the PNG"),
    ("unknown_category", "category_id 42"),
    ("no_prediction", "no prediction for 1 ground-truth image"),
    ("size", "but the ground truth"),
    ("missing_png", "panoptic PNG not found"),
])
def test_bad_predictions_are_refused_naming_the_file(tmp_path, case, message):
    gt, cats = _base()
    gt_json, gt_dir, pred_json, pred_dir = _write(tmp_path, [(gt, cats, gt, cats)])
    pred = json.loads(pred_json.read_text())
    segments = pred["annotations"][0]["segments_info"]
    if case == "png_id_not_in_json":
        pred["annotations"][0]["segments_info"] = segments[:1]
    elif case == "json_id_not_in_png":
        segments.append({"id": 5, "category_id": 1})
    elif case == "unknown_category":
        segments[0]["category_id"] = 42
    elif case == "no_prediction":
        pred["annotations"] = []
    elif case == "size":
        _png(pred_dir / "0.png", np.pad(gt, ((0, 1), (0, 0)), mode="edge"))
    else:
        (pred_dir / "0.png").unlink()
    pred_json.write_text(json.dumps(pred))
    with pytest.raises(DatasetError, match=message) as e:
        detr.panoptic_quality(gt_json, gt_dir, pred_json, pred_dir, workers=1)
    assert str(pred_dir / "0.png") in str(e.value) or str(pred_json) in str(e.value)


def _box_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under numpy 2
def test_mask_ap_equals_pycocotools_directly():
    h, w = 40, 60
    gt = {"images": [{"id": 1, "width": w, "height": h}, {"id": 2, "width": w, "height": h}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [  # polygons, and one uncompressed RLE
              {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[5, 5, 25, 5, 25, 30, 5, 30]],
               "bbox": [5, 5, 20, 25], "area": 500, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[30, 10, 55, 10, 42, 35]],
               "bbox": [30, 10, 25, 25], "area": 300, "iscrowd": 0},
              {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 40], "area": 400, "iscrowd": 0,
               "segmentation": {"size": [h, w], "counts": [0, 400, h * w - 400]}}]}
    # results: a good mask, a shifted one, a wrong class, a miss of image 2's object with a false positive
    masks = np.stack([_box_mask(h, w, 5, 5, 25, 30), _box_mask(h, w, 34, 12, 52, 30), _box_mask(h, w, 6, 6, 24, 28),
                      _box_mask(h, w, 20, 0, 40, 20)])
    results = (coco_mask_results(1, masks[:3], [0.9, 0.8, 0.3], [1, 2, 2])
               + coco_mask_results(2, masks[3:], torch.tensor([0.7]), torch.tensor([1])))
    assert np.array_equal(mask_utils.decode(results[1]["segmentation"]).astype(bool), masks[1])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        direct = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), iouType="segm")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    stats, summary = coco_mask_eval(coco_gt, results, [1, 2])
    assert stats == [float(s) for s in direct.stats]
    assert 0.1 < stats[0] < 0.9 and "Average Precision" in summary
