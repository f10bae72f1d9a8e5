"""The model's public surface: every named model builds and runs, and bad input is refused clearly."""

from __future__ import annotations

import pytest
import torch

import detr
from detr.checkpoint import CheckpointError, load_model_weights

TINY = dict(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=5)


@pytest.mark.parametrize("name", detr.list_models())
def test_every_named_model_builds_and_runs(name):
    panoptic = name.endswith("_panoptic")  # the mask head's GroupNorm(8) needs hidden_dim / 16 and nheads of 8
    model = detr.create_model(name, num_classes=7, **{**TINY, **({"hidden_dim": 128, "nheads": 8} if panoptic else {})})
    model.eval()
    backbone = model.backbone[0].body
    # DC5 dilates the last stage instead of striding it: stride 16 instead of 32.
    assert (backbone.layer4[0].conv2.stride == (1, 1)) == ("_dc5" in name)
    assert len(backbone.layer3) == (23 if "r101" in name else 6)
    with torch.no_grad():
        out = model([torch.randn(3, 64, 96), torch.randn(3, 80, 64)])
    # the softmax head has a "no object" column; Conditional DETR's sigmoid focal head has num_classes outputs
    assert out["pred_logits"].shape == (2, 5, 7 if name.startswith("conditional_") else 8)
    assert out["pred_boxes"].shape == (2, 5, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert len(out["aux_outputs"]) == 1
    if panoptic:  # a quarter of the padded batch (80 x 96)
        assert out["pred_masks"].shape == (2, 5, 20, 24)


def test_only_layer2_to_4_train_and_lr_backbone_zero_freezes_all():
    model = detr.create_model("detr_r50", **TINY)
    trainable = {n.split(".")[3] for n, p in model.named_parameters() if n.startswith("backbone") and p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    frozen = detr.create_model("detr_r50", lr_backbone=0, **TINY)
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if n.startswith("backbone"))


def test_bad_images_are_refused():
    model = detr.create_model("detr_r50", **TINY).eval()
    with pytest.raises(ValueError, match="non-empty list"):
        model([])
    with pytest.raises(ValueError, match=r"images\[1\].*3 colour channels, got 1"):
        model([torch.randn(3, 32, 32), torch.randn(1, 32, 32)])
    with pytest.raises(TypeError, match=r"images\[0\].*float.*uint8"):
        model([torch.zeros(3, 32, 32, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\]: expected a \[3, H, W\] tensor"):
        model([torch.randn(32, 32)])


def test_bad_names_and_options_are_refused():
    with pytest.raises(ValueError, match="unknown model 'detr_r18'.*detr_r50"):
        detr.create_model("detr_r18")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['hidden_size'\].*hidden_dim"):
        detr.create_model("detr_r50", hidden_size=3)
    with pytest.raises(ValueError, match="position_embedding"):
        detr.create_model("detr_r50", position_embedding="rope")
    with pytest.raises(ValueError, match="divisible"):
        detr.create_model("detr_r50", hidden_dim=30, nheads=4)
    with pytest.raises(ValueError, match="bbox_coef"):
        detr.create_criterion(num_classes=3, bbox_coef=2)


def test_weights_of_another_shape_are_explained():
    source = detr.create_model("detr_r50", num_classes=20, **TINY).state_dict()
    model = detr.create_model("detr_r50", num_classes=91, **TINY)
    with pytest.raises(CheckpointError, match=r"class_embed.weight: checkpoint \(21, 32\) vs model \(92, 32\)"):
        load_model_weights(model, source)
    with pytest.raises(RuntimeError, match="class_embed.weight"):
        model.load_state_dict(source)


def test_criterion_refuses_bad_targets():
    criterion = detr.create_criterion(num_classes=3, dec_layers=1)
    out = {"pred_logits": torch.randn(1, 4, 4), "pred_boxes": torch.rand(1, 4, 4)}
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        criterion(out, [{"labels": torch.tensor([3]), "boxes": torch.rand(1, 4)}])
    with pytest.raises(ValueError, match="expected 1 target"):
        criterion(out, [])
