"""Mosaic and mixup (DEIM): the boxes of combined synthetic images against boxes worked out here by hand."""

from __future__ import annotations

import pytest
import torch

from detr.data.mosaic import MosaicMixup, mixup, mosaic

# (height, width) of four images and one box each, xyxy pixels; each image is 0 with its box filled with i + 1.
SIZES = [(40, 60), (50, 30), (30, 50), (20, 40)]
PIXEL_BOXES = [(10, 4, 30, 24), (2, 10, 22, 40), (20, 6, 48, 28), (0, 0, 40, 20)]


def item(i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Image i as the training transforms give it: [3, H, W] and cxcywh boxes in [0, 1]."""
    h, w = SIZES[i]
    x0, y0, x1, y1 = PIXEL_BOXES[i]
    image = torch.zeros(3, h, w)
    image[:, y0:y1, x0:x1] = i + 1.0
    box = torch.tensor([[(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]])
    return image, {"boxes": box, "labels": torch.tensor([i]), "area": torch.tensor([float((x1 - x0) * (y1 - y0))]),
                   "iscrowd": torch.tensor([0]), "image_id": torch.tensor(i), "size": torch.tensor([h, w])}


def test_mosaic_boxes_are_the_hand_computed_ones():
    image, target = mosaic([item(i) for i in range(4)])
    # The grid: left column max(60, 30) = 60 wide, top row max(40, 50) = 50 tall; canvas 50 + 30 = 80 by
    # 60 + 40 = 100. Offsets (left, top): (0, 0), (60, 0), (0, 50), (60, 50).
    offsets = [(0, 0), (60, 0), (0, 50), (60, 50)]
    expected = []
    for (left, top), (x0, y0, x1, y1) in zip(offsets, PIXEL_BOXES):
        x0, x1, y0, y1 = x0 + left, x1 + left, y0 + top, y1 + top
        expected.append([(x0 + x1) / 200, (y0 + y1) / 160, (x1 - x0) / 100, (y1 - y0) / 80])
    assert torch.allclose(target["boxes"], torch.tensor(expected), atol=1e-6)
    assert target["labels"].tolist() == [0, 1, 2, 3]
    assert image.shape == (3, 40, 50) and target["size"].tolist() == [40, 50]  # half the canvas' sides
    assert torch.allclose(target["area"], torch.tensor([400.0, 600.0, 616.0, 800.0]) / 4)
    for i, (cx, cy, bw, bh) in enumerate(expected):  # each box covers its image's filled rectangle
        x0, x1 = round((cx - bw / 2) * 50) + 1, round((cx + bw / 2) * 50) - 1
        y0, y1 = round((cy - bh / 2) * 40) + 1, round((cy + bh / 2) * 40) - 1
        assert torch.allclose(image[:, y0:y1, x0:x1], torch.tensor(i + 1.0), atol=1e-4)


def test_mixup_keeps_both_sets_of_boxes():
    a, b = item(0), item(1)  # 40 x 60 and 50 x 30: canvas 50 x 60, both at the top left
    image, target = mixup([a, b], 0.45)
    expected = [[20 / 60, 14 / 50, 20 / 60, 20 / 50], [12 / 60, 25 / 50, 20 / 60, 30 / 50]]
    assert torch.allclose(target["boxes"], torch.tensor(expected), atol=1e-6)
    assert target["labels"].tolist() == [0, 1] and target["size"].tolist() == [50, 60]
    blend = torch.zeros(3, 50, 60)
    blend[:, :40, :60] += 0.45 * a[0]
    blend[:, :50, :30] += 0.55 * b[0]
    assert torch.equal(image, blend)


def test_the_wrapper_applies_them_at_its_rates():
    data = [item(i) for i in range(4)]
    assert MosaicMixup(data, 0.0, 0.0)[2][1]["labels"].tolist() == [2]
    torch.manual_seed(0)
    assert len(MosaicMixup(data, 1.0, 0.0)[0][1]["labels"]) == 4
    assert len(MosaicMixup(data, 1.0, 1.0)[0][1]["labels"]) in (5, 8)  # a mosaic mixed with an item or a mosaic
    assert len(MosaicMixup(data, 0.0, 1.0)[1][1]["labels"]) == 2
    with pytest.raises(ValueError, match="--mosaic_prob must be in"):
        MosaicMixup(data, 1.5)


def test_the_flags_are_checked():
    from detr.config import Config, DataConfig, ModelConfig, TrainConfig
    from detr.validation import validate_config

    cpu = TrainConfig(device="cpu")
    with pytest.raises(ValueError, match="--mixup_prob must be in"):
        validate_config(Config(data=DataConfig(mixup_prob=-0.1), train=cpu))
    with pytest.raises(ValueError, match="do not apply to --masks"):
        validate_config(Config(model=ModelConfig(masks=True), data=DataConfig(mosaic_prob=0.5), train=cpu))


def test_every_lever_trains_through_the_flags(tmp_path):
    """`detr train`'s flags reach the data, the criterion and the model: one tiny epoch with all of them on, then
    the checkpoint runs for inference."""
    import json

    from detr.checkpoint import load_checkpoint
    from detr.data.loaders import build_datasets, resolve_data
    from detr.inference.detector import Detector
    from detr.training.train import train

    from ..helpers.train import config, tiny_data

    argv = ["--epochs", "1", "--dec_layers", "2", "--class_loss", "mal", "--matcher_iou_power", "1",
            "--k_one2many", "2", "--mosaic_prob", "0.5", "--mixup_prob", "0.5", "--box_rpb"]
    cfg = config(tiny_data(tmp_path / "data"), tmp_path / "run", argv)
    assert (cfg.loss.matcher_iou_power, cfg.loss.k_one2many, cfg.data.mosaic_prob, cfg.model.box_rpb) == (1, 2, 0.5,
                                                                                                          True)
    assert isinstance(build_datasets(resolve_data(cfg)).train, MosaicMixup)
    train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert {"train_loss_mal", "train_loss_mal_o2m", "train_loss_bbox_o2m_0"} <= log[-1].keys()
    assert all(torch.isfinite(torch.tensor(log[-1][k])) for k in ("train_loss", "train_loss_mal_o2m"))
    assert any("box_rpb" in k for k in load_checkpoint(tmp_path / "run" / "checkpoint.pth")["model"])
    found = Detector.from_pretrained(tmp_path / "run" / "checkpoint.pth", threshold=0.0, size=64, max_size=96)(
        torch.rand(3, 70, 90))
    assert len(found) > 0
