"""The README's main job, `detr demo`, end to end (one epoch: it must run, evaluate and draw)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from detr import cli


@pytest.mark.slow
def test_demo_trains_evaluates_and_draws(tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--epochs", "1", "--output_dir", str(out), "--num_workers", "0",
                     "--backbone_warmup", "5", "--num_train", "16", "--num_val", "4"]) == 0
    logs = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(logs) == 1 and len(logs[0]["test_coco_eval_bbox"]) == 12
    assert (out / "checkpoint.pth").is_file()
    with Image.open(out / "predictions.png") as picture:
        picture.verify()
        assert picture.format == "PNG" and picture.width > picture.height > 0
