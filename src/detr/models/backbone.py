"""ResNet backbone with frozen BatchNorm, returning the last stage and the downsampled padding mask
(and, built with `return_interm_layers`, layer1-3 for the segmentation head's FPN).

Speed-ups, all invisible in the state dict:
- in eval mode, without gradients, the frozen BatchNorms are folded into the convolutions
  before them, and the convolutions run in channels-last memory format (oneDNN's fast layout
  on CPU, tensor cores' on GPU). The folded trunk is a private copy, rebuilt whenever a
  weight changes (any in-place update, `load_state_dict`, `.to()`), and dropped by `train()`;
- in training, channels-last only on request (`channels_last_training = True`, ~1.3x faster
  backbone on CPU): the same function, but its fp32 convolutions (oneDNN, CPU) are less exact
  than the official NCHW ones (on the alignment test's inputs, R50 features 1.9e-6 from float64
  instead of 7.9e-7, mostly from layer3-4), and the alignment test's gradient gate
  (within max(1e-4, twice the official fp32 error) of the official float64 gradients) then
  fails on R50, DC5 and learned positions, up to 3.4x, 5.1x and 7.7x its bound
  (`python benchmarks/conditioning.py all`).
"""

from __future__ import annotations

import copy

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


class InplaceFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (same buffers, same values) computing `x * scale + bias` in place.

    Saves two activation-sized allocations per convolution in training. Only for inputs that
    nothing else reads, such as the fresh output of the convolution before it in a ResNet.
    """

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x.mul_(scale[:, None, None]).add_(shift[:, None, None])


class Backbone(nn.Module):
    """torchvision ResNet trunk (no pooling / fc) with FrozenBatchNorm2d.

    Args:
        name: a key of `RESNETS`.
        train_backbone: if False every weight is frozen; if True only layer2-4 train
            (the stem and layer1 stay frozen, as in the paper).
        dilation: DC5 variant: the last stage is dilated instead of strided (stride 16).
        return_interm_layers: `features` also returns layer1-3 (the segmentation head's FPN inputs,
            as the official code does with masks on); detection leaves it off and keeps only layer4.

    Attributes:
        channels_last_training: run the convolutions in channels-last format in training too.
        fpn_layers, fpn_channels: the names in `features` and channels of the stride 16, 8, 4 maps.
    """

    def __init__(self, name: str = "resnet50", train_backbone: bool = True, dilation: bool = False,
                 return_interm_layers: bool = False):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone must be one of {sorted(RESNETS)}, got {name!r}")
        resnet = RESNETS[name](weights=None, replace_stride_with_dilation=[False, False, dilation],
                               norm_layer=InplaceFrozenBatchNorm2d)
        for pname, p in resnet.named_parameters():
            if not train_backbone or not pname.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
        self.name = name
        layers = {"layer4": "0"}  # "0": the last map, the key the detector (and the warm-up) reads
        if return_interm_layers:
            layers = {"layer1": "layer1", "layer2": "layer2", "layer3": "layer3", **layers}
        self.body = IntermediateLayerGetter(resnet, return_layers=layers)
        basic = name in ("resnet18", "resnet34")
        self.num_channels = 512 if basic else 2048
        self.fpn_layers = ("layer3", "layer2", "layer1")
        self.fpn_channels = (256, 128, 64) if basic else (1024, 512, 256)
        self.channels_last_training = False
        self._folded: tuple[tuple[tuple[int, int], ...], nn.Module] | None = None  # (weights' versions, trunk)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W], mask [B, H, W] -> features [B, C, h, w] (channels-last), mask [B, h, w]."""
        maps, mask = self.features(images, mask)
        return maps["0"], mask

    def features(self, images: Tensor, mask: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """images [B, 3, H, W], mask [B, H, W] -> ({"0": the last map [B, C, h, w]} (and "layer1".."layer3" when
        built for them), the mask at the last map [B, h, w]). The trunk ignores the padding, as the official one."""
        if self.channels_last_training or not self.training:
            images = images.contiguous(memory_format=torch.channels_last)
        maps = self._trunk()(images)
        return maps, downsample_mask(mask, maps["0"].shape[-2:])

    def train(self, mode: bool = True) -> Backbone:
        self._folded = None
        return super().train(mode)

    def _trunk(self) -> nn.Module:
        """The BatchNorm-folded copy of `body` when nothing needs gradients through it, else `body`."""
        if self.training or (torch.is_grad_enabled() and any(p.requires_grad for p in self.body.parameters())):
            return self.body
        tensors = [*self.body.parameters(), *self.body.buffers()]
        # inference tensors have no version counter; they cannot be updated in place outside inference mode
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            self._folded = None  # free the stale copy before building the new one
            with torch.inference_mode(False), torch.no_grad():
                self._folded = (key, fold_frozen_batchnorm(self.body).to(memory_format=torch.channels_last))
        return self._folded[1]


def downsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """The padding mask [B, H, W] (True = pad) at a feature map's size [B, h, w] (nearest, as the official code)."""
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of `module` with every FrozenBatchNorm2d that directly follows a Conv2d (among its
    parent's children, as in torchvision's ResNets) folded into that convolution's weight and bias."""
    folded = copy.deepcopy(module).requires_grad_(False)
    for parent in folded.modules():
        previous = None
        for name, child in list(parent.named_children()):
            if isinstance(child, FrozenBatchNorm2d) and isinstance(previous, nn.Conv2d):
                scale = child.weight * (child.running_var + child.eps).rsqrt()  # [C_out]
                shift = child.bias - child.running_mean * scale
                if previous.bias is not None:
                    shift = shift + previous.bias * scale
                previous.weight.copy_(previous.weight * scale[:, None, None, None])
                previous.bias = nn.Parameter(shift, requires_grad=False)
                setattr(parent, name, nn.Identity())
            previous = child
    return folded


class Joiner(nn.Sequential):
    """Backbone (a ResNet `Backbone` or a `TinyBackbone`: anything with `num_channels` whose
    `features` maps (images, mask) to (named maps, mask at the last map)) followed by the position encoding of
    its output.

    A Sequential only so that parameter names match the official checkpoints
    (`backbone.0.body.*`, `backbone.1.*`).
    """

    def __init__(self, backbone: nn.Module, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, images: Tensor,  # type: ignore[override]
                mask: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """-> features [B, C, h, w], mask [B, h, w], position encoding [B, D, h, w] in the features' dtype,
        and every map the trunk returns by name (`Backbone.features`: "0" is the features)."""
        layers, mask = self[0].features(images, mask)
        feats = layers["0"]
        pos = self[1](mask).to(feats.dtype)
        return feats, mask, pos, layers
