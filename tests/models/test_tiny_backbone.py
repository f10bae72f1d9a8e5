"""The tiny from-scratch trunk (`backbone="tiny"`): stride and mask, trainable BatchNorm, the warm-up,
checkpoints that round-trip through `Detector.from_pretrained`, and the options it refuses."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

import detr
from detr.models.tiny import TinyBackbone
from detr.training.train import train
from detr.training.warmup import warm_up_backbone

from ..helpers.predict import save_official, save_ours, tiny_model
from ..helpers.train import config, tiny_data

# (in, out) channels of its convolutions, written out: stem, then two per stage.
CONVS = [(3, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]


def conv_out(n: int) -> int:
    """Output size of a 3x3 convolution of stride 2 and padding 1."""
    return (n + 2 - 3) // 2 + 1


def test_stride_16_256_channels_and_the_mask_at_feature_size():
    backbone = TinyBackbone().eval()
    images = torch.randn(2, 3, 70, 101)
    mask = torch.zeros(2, 70, 101, dtype=torch.bool)
    mask[1, 50:, :] = True  # image 1 is 50 x 60 inside the padded batch
    mask[1, :, 60:] = True
    with torch.no_grad():
        feats, small = backbone(images, mask)
    h, w = 70, 101
    for _ in range(4):  # stem + three stages, each halving once
        h, w = conv_out(h), conv_out(w)
    assert (h, w) == (5, 7) and feats.shape == (2, 256, h, w) and backbone.num_channels == 256
    # each stride-2 convolution is centred on every other cell, so cell i is padding where pixel 16 i is
    # (official ResNets: nearest-neighbour, cell i reads pixel floor(i * H / h))
    assert torch.equal(small, mask[:, ::16, ::16])
    assert (~small[1]).sum() == math.ceil(50 / 16) * math.ceil(60 / 16)
    assert small[1].any() and not small[0].any()


def test_parameter_count_and_every_layer_trains_with_batchnorm():
    backbone = TinyBackbone()
    expected = sum(9 * c_in * c_out + 2 * c_out for c_in, c_out in CONVS)  # conv weights + BN weight, bias
    assert sum(p.numel() for p in backbone.parameters()) == expected
    assert all(p.requires_grad for p in backbone.parameters())
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == len(CONVS)
    backbone.train()
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1, torch.zeros(2, 64, 64, dtype=torch.bool))
    assert not torch.equal(norms[0].running_mean, torch.zeros(32))  # batch statistics in training


def test_frozen_tiny_trunk_keeps_weights_and_batchnorm_statistics():
    model = detr.create_model("detr_r50", num_classes=3, backbone="tiny", lr_backbone=0, hidden_dim=32, nheads=2,
                              enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=4).train()
    trunk = model.backbone[0]
    assert not any(p.requires_grad for p in trunk.parameters())
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    model([torch.randn(3, 64, 64) * 3 + 1])
    assert all(torch.equal(v, before[k]) for k, v in trunk.state_dict().items())


def test_the_whole_trunk_gets_gradients_in_detr():
    model = detr.create_model("detr_r50", num_classes=3, backbone="tiny", hidden_dim=32, nheads=2, enc_layers=1,
                              dec_layers=1, dim_feedforward=64, num_queries=4).train()
    out = model([torch.randn(3, 64, 80), torch.randn(3, 72, 64)])
    (out["pred_boxes"].sum() + out["pred_logits"].sum()).backward()
    for name, p in model.backbone.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_unsupported_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dilation.*tiny backbone"):
        TinyBackbone(dilation=True)
    with pytest.raises(ValueError, match=r"backbone must be one of \[.*'resnet50'.*'tiny'\], got 'vgg'"):
        detr.create_model("detr_r50", backbone="vgg")
    data = tiny_data(tmp_path / "data", num_train=2, num_val=1)
    with pytest.raises(ValueError, match="--backbone_weights imagenet: the tiny backbone has no pretrained "
                                         "weights; give --backbone_weights none"):
        train(config(data, tmp_path / "a", ["--backbone", "tiny", "--backbone_weights", "imagenet"]), progress=False)
    with pytest.raises(ValueError, match="--dilation does not apply to --backbone tiny"):
        train(config(data, tmp_path / "b", ["--backbone", "tiny", "--dilation"]), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work


def _warm_up_loader(tmp_path, num_train: int, augment: bool) -> torch.utils.data.DataLoader:
    """Batches of 2 from `num_train` demo images of 64 px, augmented and shuffled or not."""
    from detr.data import build_dataset, collate_fn, make_transforms

    data = tiny_data(tmp_path, num_train=num_train, num_val=1)
    ds = build_dataset(data["train_images"], data["train_annotations"], True,
                       make_transforms(augment, scales=[64], max_size=96), 5)
    return torch.utils.data.DataLoader(ds, batch_size=2, shuffle=augment, collate_fn=collate_fn)


def test_warm_up_trains_the_tiny_trunk_and_keeps_its_trainable_batchnorm(tmp_path):
    loader = _warm_up_loader(tmp_path, num_train=4, augment=True)
    torch.manual_seed(0)
    backbone = TinyBackbone(train_backbone=False).eval()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    stats = warm_up_backbone(backbone, loader, num_classes=5, steps=4, device=torch.device("cpu"))
    after = backbone.state_dict()
    assert after.keys() == before.keys()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()) == len(CONVS)
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training  # as it came
    for key in ("body.stem.0.weight", "body.layer3.3.weight", "body.stem.1.running_var"):
        assert not torch.equal(after[key], before[key]), key
    assert 0 < stats["loss"] < 10


def _with_statistics(model: detr.DETR) -> detr.DETR:
    """Non-trivial BatchNorm statistics, so that a loader that lost them would change the outputs."""
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("layout", ["ours", "official"])
def test_tiny_checkpoint_round_trips_through_from_pretrained(tmp_path, layout, caplog):
    model = _with_statistics(tiny_model(num_classes=5, backbone="tiny")).eval()
    path = tmp_path / "tiny.pth"
    if layout == "ours":
        save_ours(model, path, ["bg", "a", "b", "c", "d"], backbone="tiny", num_classes=5)
    else:  # weights alone: the architecture is read from the shapes
        save_official(model, path)
    with caplog.at_level(logging.WARNING, logger="detr"):
        detector = detr.Detector.from_pretrained(path, nheads=2, size=64, max_size=96)
    assert "cannot be told" not in caplog.text  # no dilation question for a trunk that has none
    loaded = detector.model
    assert isinstance(loaded.backbone[0], TinyBackbone)
    own, saved = loaded.state_dict(), model.state_dict()
    assert own.keys() == saved.keys() and all(torch.equal(own[k], saved[k]) for k in own)
    image = torch.randn(3, 64, 80)
    with torch.no_grad():
        expected, got = model([image]), loaded([image])
    torch.testing.assert_close(got["pred_boxes"], expected["pred_boxes"], rtol=0, atol=0)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and shifts, so that padding would show if it leaked in."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype) * 2 - 1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g, dtype=m.bias.dtype) * 2 - 1)
    return model


@pytest.mark.parametrize("name", ["detr_r50", "conditional_detr_r50"])
def test_an_image_alone_gives_its_outputs_in_a_padded_batch(name):
    torch.manual_seed(0)
    model = detr.create_model(name, num_classes=5, backbone="tiny", hidden_dim=32, nheads=4, enc_layers=2,
                              dec_layers=2, dim_feedforward=32, num_queries=6)
    model = _randomised(model.double().eval())
    g = torch.Generator().manual_seed(2)
    sizes = [(138, 128), (150, 171), (97, 203), (33, 17)]  # odd sizes: strides do not divide them
    images = [torch.randn(3, h, w, generator=g, dtype=torch.float64) for h, w in sizes]
    with torch.no_grad():
        batch = model(images)
        for i, image in enumerate(images):
            alone = model([image])
            for key in ("pred_logits", "pred_boxes"):
                torch.testing.assert_close(batch[key][i], alone[key][0], rtol=0, atol=1e-10)


def test_the_mask_marks_the_cells_an_image_alone_lacks():
    trunk = TinyBackbone(return_interm_layers=True).eval()
    images = torch.zeros(2, 3, 150, 171)
    mask = torch.ones(2, 150, 171, dtype=torch.bool)
    mask[0, :150, :171] = False
    mask[1, :97, :33] = False
    with torch.no_grad():
        maps, small = trunk.features(images, mask)
    # a 3x3 stride-2 convolution with padding 1 turns n cells into ceil(n / 2); four of them: ceil(n / 16)
    assert small.shape == (2, 10, 11)
    assert (~small[0]).all()
    assert (~small[1]).sum(0).max() == 7 and (~small[1]).sum(1).max() == 3  # ceil(97/16), ceil(33/16)
    assert not maps["0"][1][:, small[1]].any()  # padding is zero in every channel
    assert maps["layer1"].shape[-2:] == (38, 43) and not maps["layer1"][1][:, 25:, :].any()  # ceil(97/4) = 25


@pytest.mark.parametrize("amp, conv_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float32), ("none", torch.float32)])
def test_warm_up_runs_the_trunk_in_bf16_under_bf16_amp_only(tmp_path, amp, conv_dtype):
    """--amp bf16 warms the trunk up under bf16 autocast, as training runs it; its first loss is the fp32 one to
    bf16's precision. fp16 (no loss scaling in the warm-up) stays in fp32."""
    loader = _warm_up_loader(tmp_path, num_train=2, augment=False)
    losses, dtypes = {}, []
    for mode in ("none", amp):
        torch.manual_seed(0)
        backbone, head = TinyBackbone(), nn.Conv2d(256, 6, 1)
        hook = backbone.body.stem[0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
        losses[mode] = warm_up_backbone(backbone, loader, 5, steps=1, device=torch.device("cpu"), head=head,
                                        amp=mode)["loss"]
        hook.remove()
    assert dtypes == [torch.float32, conv_dtype]
    assert abs(losses[amp] - losses["none"]) <= 0.02 * losses["none"]
