"""engine.train_one_epoch / evaluate, checked against pycocotools run directly."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from torchvision.ops import box_convert

from detr import create_criterion, create_model
from detr.data import build_dataset, collate_fn, make_transforms
from detr.evaluation.evaluate import evaluate
from detr.training.engine import NonFiniteLossError, train_one_epoch

from ..helpers.train import TINY_MODEL, tiny_data


def pycocotools_stats(ann_file: str, detections: list[dict], image_ids: list[int]) -> list[float]:
    """The 12 COCOeval numbers, computed here without detr's code."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("demo"), num_train=4, num_val=4)


def loader(images, ann, batch_size=2):
    ds = build_dataset(images, ann, train=False, transforms=make_transforms(False, scales=[64], max_size=96))
    return DataLoader(ds, batch_size=batch_size, collate_fn=collate_fn), ds


def test_evaluation_equals_pycocotools_on_the_same_detections(data):
    model = create_model("detr_r50", num_classes=5, **TINY_MODEL).eval()
    criterion = create_criterion(5, dec_layers=1)
    val, ds = loader(data["val_images"], data["val_annotations"])
    stats, detections = evaluate(model, criterion, val, ds.coco, torch.device("cpu"), progress=False)
    image_ids = sorted(ds.ids)
    assert stats["coco_eval_bbox"] == pytest.approx(pycocotools_stats(data["val_annotations"], detections,
                                                                      image_ids), abs=1e-12)
    assert len(stats["coco_eval_bbox"]) == 12 and stats["AP"] == stats["coco_eval_bbox"][0]
    # The detections themselves: every query of every image, xywh in original pixels.
    assert len(detections) == len(image_ids) * TINY_MODEL["num_queries"]
    images, targets = next(iter(val))
    with torch.no_grad():
        out = model(images)
    h, w = targets[0]["orig_size"].tolist()
    probs = out["pred_logits"][0].softmax(-1)[:, :-1]
    xyxy = box_convert(out["pred_boxes"][0], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
    mine = [d for d in detections if d["image_id"] == targets[0]["image_id"]]
    for q, d in enumerate(mine):
        x0, y0, x1, y1 = xyxy[q].tolist()
        # Every COCO-results writer rounds boxes to 1/100 pixel and scores to 5 decimals.
        assert d["bbox"] == [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)]
        assert d["score"] == round(probs[q].max().item(), 5)
        assert d["category_id"] == probs[q].argmax().item()
    json.dumps(detections)  # the COCO results format is plain JSON


@pytest.mark.slow
def test_tiny_model_overfits_a_few_images(tmp_path):
    paths = tiny_data(tmp_path, num_train=3, num_val=1)
    torch.manual_seed(0)
    model = create_model("detr_r50", num_classes=5, **{**TINY_MODEL, "hidden_dim": 64, "dim_feedforward": 128,
                                                        "attention_dropout": 0.0})
    criterion = create_criterion(5, dec_layers=1)
    train, ds = loader(paths["train_images"], paths["train_annotations"], batch_size=3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    for epoch in range(500):
        stats, _ = train_one_epoch(model, criterion, train, optimizer, torch.device("cpu"), epoch, 0.1,
                                   progress=False)
        if epoch % 10 == 9:
            result, dets = evaluate(model, criterion, train, ds.coco, torch.device("cpu"), progress=False)
            if result["AP50"] >= 0.95:
                break
    ap50 = pycocotools_stats(paths["train_annotations"], dets, sorted(ds.ids))[1]
    assert ap50 >= 0.9, f"AP50 {ap50:.3f} after {epoch + 1} epochs (last loss {stats['loss']:.3f})"


def test_non_finite_loss_stops_before_the_step_and_names_the_term(data, monkeypatch):
    model = create_model("detr_r50", num_classes=5, **TINY_MODEL)
    criterion = create_criterion(5, dec_layers=1)
    train, _ = loader(data["train_images"], data["train_annotations"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward = criterion.forward

    def nan_giou(outputs, targets):
        losses = forward(outputs, targets)
        losses["loss_giou"] = losses["loss_giou"] * float("nan")
        return losses

    monkeypatch.setattr(criterion, "forward", nan_giou)
    with pytest.raises(NonFiniteLossError, match=r"epoch 3 step 0.*loss_giou=nan"):
        train_one_epoch(model, criterion, train, optimizer, torch.device("cpu"), 3, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
