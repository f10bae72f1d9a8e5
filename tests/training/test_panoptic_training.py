"""Panoptic and instance masks wired into training and evaluation: the official --dataset_file coco_panoptic
command line, custom panoptic folders, instance masks, PQ and mask AP in the log and in `detr eval`, the id-0
convention of the written predictions, and the mask losses in the test loss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import detr
from detr.checkpoint import load_checkpoint
from detr.cli.flags import build_parser, config_from_args
from detr.data import DatasetError, make_demo_dataset, write_id_png
from detr.data.loaders import build_datasets, resolve_data
from detr.data.panoptic import CocoPanoptic
from detr.evaluation.evaluate import evaluate_checkpoint
from detr.evaluation.panoptic import panoptic_quality
from detr.evaluation.segm_eval import shift_segments
from detr.loss.criterion import create_criterion
from detr.presets import PANOPTIC_DEMO_MASKS
from detr.validation import validate_config

from ..helpers.train import TINY_FLAGS, run_cli

SEGM = ["--hidden_dim", "128", "--nheads", "8", "--masks"]  # the mask head's GroupNorm(8) needs these widths


@pytest.fixture(scope="module")
def pan(tmp_path_factory) -> dict[str, str]:
    paths = make_demo_dataset(tmp_path_factory.mktemp("pan"), num_train=4, num_val=3, image_size=64, seed=1,
                              panoptic=True)
    return {k: str(v) for k, v in paths.items()}


def panoptic_flags(p: dict[str, str]) -> list[str]:
    return [f"--{s}_{kind}={p[f'{s}_{key}']}" for s in ("train", "val")
            for kind, key in (("images", "images"), ("annotations", "panoptic_annotations"), ("panoptic", "panoptic"))]


def parse(argv: list[str]):
    return config_from_args(build_parser("test", "").parse_args([*TINY_FLAGS, *argv]))


def coco_panoptic_layout(p: dict[str, str], root: Path) -> tuple[Path, Path]:
    """The official COCO 2017 panoptic layout, made of links to the demo data."""
    coco, panoptic = root / "coco", root / "coco_panoptic"
    (panoptic / "annotations").mkdir(parents=True)
    coco.mkdir()
    for split in ("train", "val"):
        os.symlink(p[f"{split}_images"], coco / f"{split}2017")
        os.symlink(p[f"{split}_panoptic"], panoptic / f"panoptic_{split}2017")
        os.symlink(p[f"{split}_panoptic_annotations"], panoptic / "annotations" / f"panoptic_{split}2017.json")
    return coco, panoptic


def test_dataset_file_coco_panoptic_is_parsed_and_used(pan, tmp_path):
    coco, panoptic = coco_panoptic_layout(pan, tmp_path)
    with pytest.raises(ValueError, match="--dataset_file coco_panoptic needs --coco_panoptic_path"):
        parse(["--dataset_file", "coco_panoptic", "--coco_path", str(coco)])
    with pytest.raises(ValueError, match="--coco_panoptic_path .* --dataset_file coco_panoptic"):
        parse(["--coco_path", str(coco), "--coco_panoptic_path", str(panoptic)])
    with pytest.raises(ValueError, match="--dataset_file voc: must be one of coco, coco_panoptic"):
        parse(["--dataset_file", "voc"])
    cfg = resolve_data(parse(["--dataset_file", "coco_panoptic", "--coco_path", str(coco),
                              "--coco_panoptic_path", str(panoptic), *SEGM]))
    assert cfg.model.num_classes == 250  # the official COCO panoptic head
    assert cfg.data.val_panoptic == str(panoptic / "panoptic_val2017")
    assert cfg.data.train_annotations == str(panoptic / "annotations" / "panoptic_train2017.json")
    data = build_datasets(cfg)
    assert isinstance(data.train, CocoPanoptic) and data.panoptic is data.val.report
    _, target = data.val[0]
    h, w = target["size"].tolist()
    assert target["masks"].shape == (len(target["labels"]), h, w) and target["masks"].any((1, 2)).all()
    # the box / mask AP ground truth: one annotation per panoptic segment, its mask the PNG's pixels
    gt = json.loads(Path(pan["val_panoptic_annotations"]).read_text())
    assert len(data.coco_gt.dataset["annotations"]) == sum(len(a["segments_info"]) for a in gt["annotations"])
    first = gt["annotations"][0]["segments_info"][0]
    ann = next(a for a in data.coco_gt.dataset["annotations"] if a["image_id"] == gt["annotations"][0]["image_id"])
    assert data.coco_gt.annToMask(ann).sum() == first["area"]


def test_custom_panoptic_folders_need_their_json(pan):
    cfg = parse([f"--val_panoptic={pan['val_panoptic']}", f"--train_images={pan['train_images']}",
                 f"--train_annotations={pan['train_annotations']}", "--output_dir="])
    with pytest.raises(ValueError, match="--val_panoptic needs --val_annotations"):
        validate_config(cfg)


def test_instance_masks_path_and_no_masks_error(pan, tmp_path):
    cfg = resolve_data(parse([f"--{k}={pan[k]}" for k in ("train_images", "train_annotations", "val_images",
                                                           "val_annotations")] + SEGM))
    data = build_datasets(cfg)
    _, target = data.train[0]
    assert "masks" in target and target["masks"].shape[0] == len(target["labels"]) > 0
    assert all(a["segmentation"] for a in data.coco_gt.dataset["annotations"])  # mask AP ground truth
    det = {k: str(v) for k, v in make_demo_dataset(tmp_path / "det", num_train=2, num_val=2, image_size=64).items()}
    cfg = resolve_data(parse([f"--{k}={det[k]}" for k in ("train_images", "train_annotations", "val_images",
                                                           "val_annotations")] + SEGM))
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=f"--train_annotations {det['train_annotations']}"
                                                  ": --masks needs instance masks"):
        build_datasets(cfg)


def test_listed_id_zero_is_a_segment_and_written_ids_start_at_one(tmp_path):
    # ground truth 2x2: segment 7 (category 1) on the left column, VOID on the right
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    write_id_png(gt_dir / "1.png", np.array([[7, 0], [7, 0]]))
    gt = {"annotations": [{"image_id": 1, "file_name": "1.png",
                           "segments_info": [{"id": 7, "category_id": 1, "iscrowd": 0, "area": 2}]}],
          "categories": [{"id": 1, "name": "a", "isthing": 1}]}
    # the official postprocess's first segment has id 0: listed, it is a segment covering the left column
    write_id_png(pred_dir / "1.png", np.array([[0, 0], [0, 0]]))
    listed = {"annotations": [{"image_id": 1, "file_name": "1.png",
                               "segments_info": [{"id": 0, "category_id": 1, "area": 4}]}]}
    # by hand: intersection 2, union 4 + 2 - 2 - 2 (its pixels on VOID left out) = 2 -> IoU 1, TP
    assert panoptic_quality(gt, gt_dir, listed, pred_dir, workers=1)["All"]["pq"] == pytest.approx(1.0)
    unlisted = {"annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": []}]}
    res = panoptic_quality(gt, gt_dir, unlisted, pred_dir, workers=1)  # all VOID: one FN, PQ 0
    assert res["All"]["pq"] == 0.0 and res["All"]["n"] == 1
    # what the evaluation writes: ids + 1, unknown categories and empty segments left VOID
    ids, segments = shift_segments(np.array([[0, 1], [2, 2]]), [
        {"id": 0, "category_id": 1, "isthing": True, "area": 1}, {"id": 1, "category_id": 9, "isthing": False, "area": 1},
        {"id": 2, "category_id": 1, "isthing": True, "area": 2}, {"id": 3, "category_id": 1, "isthing": True, "area": 0}],
        {1})
    assert ids.tolist() == [[1, 0], [3, 3]] and [s["id"] for s in segments] == [1, 3]


@pytest.fixture(scope="module")
def trained(pan, tmp_path_factory) -> Path:
    """A segmentation model trained one epoch on panoptic folders through `detr train`."""
    out = tmp_path_factory.mktemp("run")
    done = run_cli(["train", *TINY_FLAGS, *SEGM, *panoptic_flags(pan), "--epochs", "1", f"--output_dir={out}"],
                   timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_panoptic_train_then_eval_end_to_end(pan, trained, tmp_path):
    line = json.loads((trained / "log.txt").read_text().splitlines()[-1])
    for key in ("test_PQ_all", "test_PQ_th", "test_PQ_st", "test_coco_eval_masks", "test_mask_AP",
                "train_loss_mask", "test_loss_dice"):
        assert key in line, key
    assert set(line["test_PQ_all"]) == {"pq", "sq", "rq", "n"}
    # PQ recomputed directly from the predictions the run wrote, against the dataset's own files
    written = json.loads((trained / "panoptic_val.json").read_text())
    assert all(s["id"] >= 1 for a in written["annotations"] for s in a["segments_info"])
    direct = panoptic_quality(pan["val_panoptic_annotations"], pan["val_panoptic"], written,
                              trained / "panoptic_eval", workers=1)
    assert line["test_PQ_all"] == pytest.approx(direct["All"])
    out = tmp_path / "eval"
    done = run_cli(["eval", "--weights", str(trained / "checkpoint.pth"), *panoptic_flags(pan)[3:],
                    "--device", "cpu", "--num_workers", "0", f"--output_dir={out}"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((out / "eval.json").read_text())
    assert saved["PQ_all"] == pytest.approx(line["test_PQ_all"]) and "coco_eval_masks" in saved
    assert "PQ" in done.stderr + done.stdout


@pytest.mark.slow
def test_mask_losses_are_in_the_test_loss(pan, trained):
    cfg = parse([*panoptic_flags(pan)[3:], "--output_dir="])
    stats = evaluate_checkpoint(cfg, str(trained / "checkpoint.pth"), progress=False)
    weights = create_criterion(8, 1, True, "softmax", masks=True).weight_dict  # independent of the run's criterion
    assert weights["loss_mask"] == weights["loss_dice"] == 1.0
    assert stats["loss_mask"] > 0 and stats["loss_dice"] > 0
    expected = sum(stats[k] * w for k, w in weights.items() if k in stats)
    assert stats["loss"] == pytest.approx(expected, rel=1e-6)
    assert stats["loss"] - stats["loss_mask"] - stats["loss_dice"] == pytest.approx(
        sum(stats[k] * w for k, w in weights.items() if k in stats and "mask" not in k and "dice" not in k), rel=1e-6)
    assert torch.isfinite(torch.tensor(stats["PQ"]))


@pytest.mark.parametrize("argv, given", [([], {}), (["--epochs", "2"], {"epochs": 2, "lr_drop": 1})])
def test_panoptic_demo_cli_keeps_its_own_epochs_unless_given(monkeypatch, argv, given):
    from detr.cli import demo

    seen = {}
    monkeypatch.setattr(demo, "run_panoptic_demo", lambda overrides, data: seen.update(overrides=overrides, data=data))
    assert demo.main(["--masks", *argv]) == 0
    assert {k: seen["overrides"][k] for k in ("epochs", "lr_drop", "output_dir") if k in seen["overrides"]} == given
    assert seen["data"] == {}


@pytest.mark.slow
def test_panoptic_demo_end_to_end_on_a_tiny_set(tmp_path):
    from detr.cli.demo_panoptic import run_panoptic_demo

    summary = run_panoptic_demo({"epochs": 1, "lr_drop": 1, "backbone_warmup": 2, "batch_size": 2,
                                 "output_dir": str(tmp_path)}, {"num_train": 4, "num_val": 2, "image_size": 64},
                                num_pictures=2)
    test = summary["last_test"]
    assert {"PQ_all", "PQ_th", "PQ_st", "mask_AP"} <= set(test)
    line = json.loads((tmp_path / "log.txt").read_text().splitlines()[-1])
    assert line["test_PQ_all"] == pytest.approx(test["PQ_all"])
    # the same numbers from the written predictions and the demo's own ground truth, computed directly
    direct = panoptic_quality(tmp_path / "data" / "panoptic_val.json", tmp_path / "data" / "panoptic_val",
                              tmp_path / "panoptic_val.json", tmp_path / "panoptic_eval", workers=1)
    assert direct["All"] == pytest.approx(test["PQ_all"])
    # the official recipe: a detector trained first, then the mask head alone on it, frozen
    assert summary["detection"]["epochs_done"] == 1 and (tmp_path / "detection" / "checkpoint.pth").is_file()
    cfg = load_checkpoint(tmp_path / "checkpoint.pth")["config"]
    assert cfg["model"]["masks"] and Path(cfg["train"]["frozen_weights"]).parent == tmp_path / "detection"
    assert cfg["train"]["lr"] == PANOPTIC_DEMO_MASKS["lr"]
    from PIL import Image

    with Image.open(summary["picture"]) as im:
        assert im.width > 2 * 64 * 3  # two enlarged pictures side by side


def _perfect_outputs(t: dict, num_classes: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Outputs of one image that reproduce its ground truth exactly, the masks in the top-left corner of a
    `size` frame (the padded batch) whose padding belongs to no query."""
    masks, labels = t["masks"], t["labels"]  # [N, H, W], [N]
    n, (h, w) = len(labels), masks.shape[-2:]
    logits = torch.full((1, n + 2, num_classes + 1), -10.0)
    logits[0, torch.arange(n), labels] = 10.0
    logits[0, n:, -1] = 10.0  # two spare queries: "no object"
    pred_masks = torch.full((1, n + 2, *size), -10.0)
    pred_masks[0, :n, :h, :w][masks] = 10.0
    return {"pred_logits": logits, "pred_boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(1, n + 2, 1),
            "pred_masks": pred_masks}


@pytest.mark.parametrize("batched", [False, True])
def test_perfect_outputs_score_pq_and_mask_ap_one(pan, batched):
    """The evaluation path end to end (postprocess, renumbering, PNGs, PQ, RLE, COCOeval) on outputs that
    reproduce the ground truth exactly: PQ and mask AP must be 1, whatever the ids; `batched`: all images of
    different sizes in one padded batch, each image's masks in its own top-left part of the padded frame."""
    from detr.data import build_panoptic_dataset
    from detr.data.panoptic import CocoPanoptic
    from detr.evaluation.segm_eval import MaskEvaluator

    ds = build_panoptic_dataset(pan["val_images"], pan["val_panoptic_annotations"], pan["val_panoptic"], train=False)
    raw = CocoPanoptic(ds.report, transforms=lambda image, target: (image, target))  # masks at the image size
    targets = [raw[i][1] for i in range(len(raw))]
    for t in targets:
        t["size"] = t["orig_size"]
    ev = MaskEvaluator("softmax", ds.report)
    if batched:
        padded = tuple(max(int(t["size"][i]) for t in targets) for i in (0, 1))
        assert len({tuple(t["size"].tolist()) for t in targets}) > 1  # the batch has padding
        parts = [_perfect_outputs(t, ds.num_classes, padded) for t in targets]
        q = max(p["pred_logits"].shape[1] for p in parts)
        outputs = {k: torch.cat([torch.cat([p[k], p[k][:, -1:].expand(-1, q - p[k].shape[1], *p[k].shape[2:])], 1)
                                 for p in parts]) for k in parts[0]}  # extra queries repeat a "no object" one
        ev.update(outputs, targets, torch.stack([t["orig_size"] for t in targets]))
        sizes = torch.stack([t["size"] for t in targets])  # the official resizing stretches the padded masks instead
        stretched = detr.postprocess_panoptic(outputs, sizes)
        cropped = detr.postprocess_panoptic(outputs, sizes, crop_padding=True)
        assert any(not torch.equal(a["segment_ids"], b["segment_ids"]) for a, b in zip(stretched, cropped))
    else:
        for t in targets:
            ev.update(_perfect_outputs(t, ds.num_classes, tuple(t["masks"].shape[-2:])), [t], t["orig_size"][None])
    stats = ev.summarize(ds.coco, ds.ids)
    assert stats["PQ_all"]["pq"] == pytest.approx(1.0) and stats["PQ_st"]["n"] > 0 and stats["PQ_th"]["n"] > 0
    assert stats["mask_AP"] == pytest.approx(1.0)
