"""`detr train --data`: the contiguous class mapping end to end, `detr.train`, and the defaults of each way in."""

from __future__ import annotations

import json

import pytest
import torch

import detr
from detr.checkpoint import load_checkpoint
from detr.cli import main as cli_main
from detr.cli.flags import build_parser, config_from_args
from detr.config import Config
from detr.data.loaders import build_datasets, resolve_data
from detr.validation import validate_config

from ..helpers.format_writers import coco_dict, reference, save_png, write_coco2017, write_roboflow

TINY = ["--backbone", "tiny", "--backbone_weights", "none", "--weights", "none", "--hidden_dim", "32",
        "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "64", "--num_queries", "8",
        "--epochs", "1", "--scales", "64", "--max_size", "96", "--no_random_crop", "--device", "cpu",
        "--num_workers", "0", "--batch_size", "2", "--seed", "3"]
TINY_OPTIONS = {"backbone": "tiny", "backbone_weights": "none", "weights": "none", "hidden_dim": 32, "nheads": 2,
                "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 64, "num_queries": 8, "epochs": 1,
                "scales": [64], "max_size": 96, "no_random_crop": True, "device": "cpu", "num_workers": 0,
                "batch_size": 2, "seed": 3}


def parse(argv: list[str]) -> Config:
    return config_from_args(build_parser("test", "").parse_args(argv))


def test_sparse_ids_train_a_contiguous_head_and_predict_reports_them(tmp_path):
    ref = reference(ids=(1, 7, 1000))
    root = write_coco2017(tmp_path / "ds", ref)
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(root), *TINY, "--output_dir", str(run)]) == 0
    ckpt = load_checkpoint(run / "checkpoint.pth")
    assert ckpt["config"]["data"]["category_ids"] == [1, 7, 1000]
    assert ckpt["model"]["class_embed.weight"].shape[0] == 3 + 1  # 3 classes and "no object", not 1001 + 1

    out = tmp_path / "pred"
    assert cli_main(["predict", str(root / "val2017"), "--weights", str(run / "checkpoint.pth"), "--threshold", "0",
                     "--output_dir", str(out)]) == 0
    found = json.loads((out / "detections.json").read_text())
    assert found and {d["category_id"] for d in found} <= {1, 7, 1000}

    detector = detr.Detector.from_pretrained(run / "checkpoint.pth", threshold=0.0)
    detections = detector(root / "val2017" / "c.png")
    assert len(detections) == 8
    for cid, name in zip(detections.labels.tolist(), detections.names):
        assert ref.categories[cid] == name  # each id with its own name

    # an exported graph keeps the mapping too (its metadata), so the ONNX Detector reports the same ids and names
    onnx_file = tmp_path / "m.onnx"
    assert cli_main(["export", "--weights", str(run / "checkpoint.pth"), "--output", str(onnx_file)]) == 0
    exported = detr.Detector.from_pretrained(onnx_file, threshold=0.0)(root / "val2017" / "c.png")
    assert exported.labels.tolist() == detections.labels.tolist() and exported.names == detections.names

    assert cli_main(["eval", "--weights", str(run / "checkpoint.pth"), "--device", "cpu", "--num_workers", "0"]) == 0
    val = json.loads((run / "detections_val.json").read_text())
    assert val and {d["category_id"] for d in val} <= {1, 7, 1000}

    # the same data, named again: numbered with the checkpoint's mapping even when a class is missing from it
    ref.categories[5] = "fox"  # listed, with no box: its id is not among the model's classes
    other = write_coco2017(tmp_path / "again", ref)
    assert cli_main(["eval", "--weights", str(run / "checkpoint.pth"), "--data", str(other), "--device", "cpu",
                     "--num_workers", "0", "--output_dir", str(tmp_path / "ev")]) == 0
    coco = json.loads((tmp_path / "ev" / "eval_data" / "val.json").read_text())
    assert [(c["id"], c["dataset_id"], c["name"]) for c in coco["categories"]] == \
        [(0, 1, "cat"), (1, 7, "dog"), (2, 1000, "bird")]
    val = json.loads((tmp_path / "ev" / "detections_val.json").read_text())
    assert val and {d["category_id"] for d in val} <= {1, 7, 1000}


def test_python_train_equals_the_command(tmp_path):
    root = write_roboflow(tmp_path / "ds", reference())
    assert cli_main(["train", "--data", str(root), *TINY, "--output_dir", str(tmp_path / "cli")]) == 0
    result = detr.train(data=root, output_dir=tmp_path / "api", **TINY_OPTIONS)
    assert result.last_checkpoint == tmp_path / "api" / "checkpoint.pth"
    assert result.best_checkpoint == tmp_path / "api" / "best.pth"
    records = [json.loads(line) for line in (tmp_path / "api" / "log.txt").read_text().splitlines()]
    assert [m["epoch"] for m in result.metrics] == [r["epoch"] for r in records]
    assert result.metrics[0]["coco_eval_bbox"] == records[0]["test_coco_eval_bbox"]
    a = load_checkpoint(tmp_path / "cli" / "checkpoint.pth")["model"]
    b = load_checkpoint(result.last_checkpoint)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_python_train_validates_as_the_flags(tmp_path, capsys):
    root = write_roboflow(tmp_path / "ds", reference())
    with pytest.raises(ValueError, match=r"no data: give data=DIR.*detr demo"):
        detr.train(epochs=1)  # as `detr train` with no data flag
    with pytest.raises(ValueError, match="epochs: expected int"):
        detr.train(data=root, epochs="5")
    with pytest.raises(ValueError, match="unknown option"):
        detr.train(data=root, lerning_rate=1e-4)
    with pytest.raises(ValueError) as e:
        detr.train(data=root, lr=-1.0, output_dir=tmp_path / "a")
    assert cli_main(["train", "--data", str(root), "--lr", "-1", "--output_dir", str(tmp_path / "b")]) == 2
    assert str(e.value) == "--lr must be >= 0, got -1.0"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"detr train: error: {e.value}"


def test_defaults_official_flags_keep_the_paper(tmp_path):
    paper = Config()
    root = write_coco2017(tmp_path / "coco", reference())
    ann = root / "annotations" / "instances_train2017.json"
    for argv in (["--coco_path", str(root)],
                 ["--train_images", str(root / "train2017"), "--train_annotations", str(ann)]):
        cfg = parse(argv)
        assert (cfg.train.epochs, cfg.train.lr_drop, cfg.train.lr, cfg.train.lr_backbone, cfg.train.weights) == \
            (paper.train.epochs, paper.train.lr_drop, paper.train.lr, paper.train.lr_backbone, "") == \
            (300, 200, 1e-4, 1e-5, "")
        assert cfg.data.category_ids is None


def test_defaults_with_data_fine_tune(tmp_path):
    root = str(write_roboflow(tmp_path / "ds", reference()))
    cfg = parse(["--data", root])
    assert (cfg.train.epochs, cfg.train.lr_drop, cfg.train.lr, cfg.train.weights) == (50, 40, 1e-4, "detr_r50")
    # --recipe fast from trained weights: 3 query groups, the weight average, the backbone at 4x the rate
    assert (cfg.train.recipe, cfg.model.num_groups, cfg.train.ema_decay, cfg.train.lr_backbone) == \
        ("fast", 3, 0.9995, 4e-4)
    official = parse(["--data", root, "--recipe", "official"])
    assert (official.model.num_groups, official.train.ema_decay, official.train.lr_backbone) == (1, 0.0, 1e-5)
    assert parse(["--data", root, "--lr_backbone", "2e-5"]).train.lr_backbone == 2e-5  # flags win
    scratch = parse(["--data", root, "--weights", "none"])  # the ImageNet backbone: no change of its rate
    assert (scratch.model.num_groups, scratch.train.lr_backbone) == (3, 1e-5)
    with pytest.raises(ValueError, match="--data trains with --recipe fast unless --recipe is given"):
        parse(["--data", root, "--num_groups", "1"])
    assert parse(["--data", root, "--weights", "none"]).train.weights == ""
    assert parse(["--data", root, "--epochs", "7"]).train.epochs == 7
    assert parse(["--data", root, "--model", "detr_r101"]).train.weights == "detr_r101"
    assert parse(["--data", root, "--backbone", "resnet101", "--dilation"]).train.weights == "detr_r101_dc5"
    assert parse(["--data", root, "--backbone", "tiny", "--backbone_weights", "none"]).train.weights == ""
    assert parse(["--data", root, "--model", "conditional_detr_r50"]).train.weights == ""
    with pytest.raises(ValueError, match="either --data or --coco_path"):
        validate_config(parse(["--data", root, "--coco_path", root]))


def test_official_flags_keep_labels_equal_to_category_ids(tmp_path):
    ref = reference(ids=(1, 7, 1000))
    for split in ("train", "val"):
        (tmp_path / f"{split}.json").write_text(json.dumps(coco_dict(ref, split)))
        for name, w, h in ref.images[split]:
            save_png(tmp_path / split / name, w, h)
    cfg = parse([*TINY, "--output_dir", str(tmp_path / "run"),
                 "--train_images", str(tmp_path / "train"), "--train_annotations", str(tmp_path / "train.json"),
                 "--val_images", str(tmp_path / "val"), "--val_annotations", str(tmp_path / "val.json")])
    cfg = resolve_data(cfg)
    assert cfg.model.num_classes == 1001 and cfg.data.category_ids is None
    data = build_datasets(cfg)
    labels = {int(v) for r in data.train.report.records.values() for v in r.target["labels"]}
    assert labels == {1, 7, 1000}
