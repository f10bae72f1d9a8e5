"""ResNet backbone with frozen BatchNorm, returning the last stage and the downsampled padding mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}


class Backbone(nn.Module):
    """torchvision ResNet trunk (no pooling / fc) with FrozenBatchNorm2d.

    Args:
        name: a key of `RESNETS`.
        train_backbone: if False every weight is frozen; if True only layer2-4 train
            (the stem and layer1 stay frozen, as in the paper).
        dilation: DC5 variant: the last stage is dilated instead of strided (stride 16).
    """

    def __init__(self, name: str = "resnet50", train_backbone: bool = True, dilation: bool = False):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone must be one of {sorted(RESNETS)}, got {name!r}")
        resnet = RESNETS[name](weights=None, replace_stride_with_dilation=[False, False, dilation],
                               norm_layer=FrozenBatchNorm2d)
        for pname, p in resnet.named_parameters():
            if not train_backbone or not pname.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})
        self.num_channels = 512 if name in ("resnet18", "resnet34") else 2048

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W], mask [B, H, W] -> features [B, C, h, w], mask [B, h, w]."""
        feats = self.body(images)["0"]
        mask = F.interpolate(mask[None].float(), size=feats.shape[-2:]).to(torch.bool)[0]
        return feats, mask


class Joiner(nn.Sequential):
    """Backbone followed by the position encoding of its output.

    A Sequential only so that parameter names match the official checkpoints
    (`backbone.0.body.*`, `backbone.1.*`).
    """

    def __init__(self, backbone: Backbone, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        """-> features [B, C, h, w], mask [B, h, w], position encoding [B, D, h, w] in the features' dtype."""
        feats, mask = self[0](images, mask)
        pos = self[1](mask).to(feats.dtype)
        return feats, mask, pos
