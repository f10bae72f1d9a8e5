"""Where a fresh run's backbone starts: ImageNet weights (downloaded once, tested offline with a
served file), a local ResNet state dict, or random weights plus the dense warm-up."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detr.checkpoint import CheckpointError
from detr.models.backbone import Backbone, InplaceFrozenBatchNorm2d
from detr.training.train import train
from detr.training.warmup import IGNORE, _swap_norms, box_label_map, warm_up_backbone
from detr.weights.hub import WeightsError
from detr.weights.loading import imagenet_backbone_url, load_backbone_weights

from ..helpers.train import config, tiny_data
from .test_weights import cache, no_network, serve  # noqa: F401  (fixtures)

# torchvision's published ImageNet files (IMAGENET1K_V1, what the official code loads), written out.
TORCHVISION_V1 = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth",
                  "resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}


def resnet_state(name: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict as the published files hold it (fc included), with
    non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.state_dict()


def assert_trunk_equals(backbone: Backbone, state: dict[str, torch.Tensor]) -> None:
    own = backbone.body.state_dict()
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(own[key], value), key


def test_imagenet_urls_are_torchvision_v1():
    for name, file_name in TORCHVISION_V1.items():
        assert imagenet_backbone_url(name) == f"https://download.pytorch.org/models/{file_name}"


def test_imagenet_weights_download_once_then_load_from_cache(cache, monkeypatch):  # noqa: F811
    state = resnet_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    url = f"https://example.invalid/models/resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    monkeypatch.setattr("detr.weights.loading.imagenet_backbone_url", lambda name: url)
    asked = serve(monkeypatch, data)
    backbone = Backbone("resnet18")
    path = load_backbone_weights(backbone, "imagenet", progress=False)
    assert path.parent == cache and asked == [url]
    assert_trunk_equals(backbone, state)
    again = Backbone("resnet18")
    load_backbone_weights(again, "imagenet", progress=False)
    assert len(asked) == 1  # from the cache
    assert_trunk_equals(again, state)


def test_imagenet_offline_names_the_file_to_fetch(cache, no_network):  # noqa: F811
    with pytest.raises(WeightsError, match="https://download.pytorch.org/models/resnet50-0676ba61.pth.*"
                                           "--backbone_weights none"):
        load_backbone_weights(Backbone("resnet50"), "imagenet", progress=False)


def test_local_file_of_another_resnet_is_refused(tmp_path):
    torch.save(resnet_state("resnet34"), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match=r"r34\.pth.*resnet18.*do not fit"):
        load_backbone_weights(Backbone("resnet18"), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="no such file"):
        load_backbone_weights(Backbone("resnet18"), tmp_path / "missing.pth")


def test_training_starts_from_backbone_weights_file(tmp_path):
    data = tiny_data(tmp_path / "data", num_train=2, num_val=1)
    state = resnet_state()
    torch.save(state, tmp_path / "r18.pth")
    out = tmp_path / "run"
    train(config(data, out, ["--epochs", "1", "--backbone_weights", str(tmp_path / "r18.pth")]), progress=False)
    saved = torch.load(out / "checkpoint.pth", weights_only=False)["model"]
    # the stem and layer1 are frozen (as in the paper): they still hold the file's values
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.running_mean"):
        assert torch.equal(saved[f"backbone.0.body.{key}"], state[key]), key
    with pytest.raises(ValueError, match="--backbone_weights nowhere.pth: no such file"):
        train(config(data, out, ["--backbone_weights", "nowhere.pth"]), progress=False)


def test_box_label_map_draws_small_boxes_on_top_and_ignores_padding():
    # image 10 x 20 (h x w) in a 12 x 24 batch; a big box of label 3 and a small one of label 0 inside it
    target = {"size": torch.tensor([10, 20]), "labels": torch.tensor([0, 3]),
              "boxes": torch.tensor([[0.25, 0.3, 0.1, 0.2], [0.25, 0.5, 0.5, 1.0]])}  # cx cy w h
    labels = box_label_map([target], 12, 24)[0]
    expected = torch.zeros(12, 24, dtype=torch.long)
    expected[10:, :] = IGNORE
    expected[:, 20:] = IGNORE
    expected[0:10, 0:10] = 4  # label 3 -> channel 4 (0 is background)
    expected[2:4, 4:6] = 1  # label 0 -> channel 1, drawn over the big box
    assert torch.equal(labels, expected)


def test_norm_swap_keeps_the_function_in_eval_mode():
    torch.manual_seed(0)
    body = Backbone("resnet18").body
    _swap_norms(body, trainable=True)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    body.train()
    for _ in range(3):  # move the running statistics away from (0, 1)
        body(torch.randn(2, 3, 64, 64))
    body.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = body(x)["0"]
        _swap_norms(body, trainable=False)
        after = body(x)["0"]
    assert all(not isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, InplaceFrozenBatchNorm2d) for m in body.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_warm_up_trains_the_trunk_and_restores_the_frozen_layout(tmp_path):
    from detr.data import build_dataset, collate_fn, make_transforms

    data = tiny_data(tmp_path, num_train=4, num_val=1)
    ds = build_dataset(data["train_images"], data["train_annotations"], True,
                       make_transforms(True, scales=[64], max_size=96), 5)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True, collate_fn=collate_fn)
    torch.manual_seed(0)
    backbone = Backbone("resnet18")
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    stats = warm_up_backbone(backbone, loader, num_classes=5, steps=6, device=torch.device("cpu"))
    after = backbone.state_dict()
    assert after.keys() == before.keys()  # same state-dict layout as before (and as ImageNet files)
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == trainable
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "bn1.running_var"):
        assert not torch.equal(after[f"body.{key}"], before[f"body.{key}"]), key  # the whole trunk learns
    assert 0 < stats["loss"] < 10
