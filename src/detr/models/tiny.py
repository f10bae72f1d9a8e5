"""A tiny convolutional trunk (`backbone="tiny"`) for training DETR from scratch on a CPU.

Stem: a 3x3 stride-2 convolution to 32 channels; then three stages of 64, 128 and 256
channels, each a 3x3 stride-2 convolution and a 3x3 convolution; every convolution is followed
by BatchNorm and ReLU. Stride 16, 256 output channels, ~1.2M parameters: about 170 MMAC per
128 x 128 image, against ~2.4 GMAC for ResNet-18's trunk (stride 32).

No pretrained weights exist for it, so two things differ from the ResNet trunks:
- its BatchNorms are ordinary trainable `nn.BatchNorm2d` (batch statistics in training, running
  statistics in eval): a random trunk needs a normalisation that follows it as it learns, and a
  frozen BatchNorm at its initial values would be the identity. (The batch statistics include the
  zero padding of smaller images of a batch, as a ResNet trained with BatchNorm would.)
- the padding of a batch stays zero through the trunk, and its mask marks exactly the cells that an image
  alone does not have (`TinyBackbone.features`): otherwise the padding's features leak into the image edge's
  cells, the model learns where the padding starts, and an image alone gets other boxes than in a batch
  (BENCHMARKS.md, "Why the presets are what they are"). The official ResNet trunks keep the official code's behaviour.
- every layer trains when the backbone trains; the ResNets keep their ImageNet stem and layer1.
  With `train_backbone=False` the weights are frozen and so are the BatchNorm statistics (the
  BatchNorms stay in eval mode).

Its `body` returns {"0": last feature map}, like the ResNet trunks' (the backbone warm-up relies on it), and
with `return_interm_layers` also "layer1" and "layer2" (the segmentation head's FPN reads "0", "layer2",
"layer1": strides 16, 8, 4).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

TINY_CHANNELS = (32, 64, 128, 256)  # stem, layer1, layer2, layer3


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def tiny_trunk(channels: tuple[int, ...] = TINY_CHANNELS) -> nn.Sequential:
    """The layers: `stem` (one conv, stride 2), then `layer1`.. (a stride-2 conv and a conv each)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(*_conv_bn_relu(3, channels[0], 2)))
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]), start=1):
        layers[f"layer{i}"] = nn.Sequential(*_conv_bn_relu(c_in, c_out, 2), *_conv_bn_relu(c_out, c_out, 1))
    trunk = nn.Sequential(layers)
    for m in trunk.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return trunk


class TinyBackbone(nn.Module):
    """The tiny trunk (see the module doc) with the same interface as `Backbone`.

    Args:
        train_backbone: if False, every weight and the BatchNorm statistics are frozen.
        dilation: not supported (the trunk already has stride 16); True is refused.

    Attributes:
        name: "tiny".
        body: returns {"0": features [B, 256, H/16, W/16]}.
        num_channels: 256.
    """

    def __init__(self, train_backbone: bool = True, dilation: bool = False, return_interm_layers: bool = False):
        super().__init__()
        if dilation:
            raise ValueError("dilation (DC5) does not apply to the tiny backbone (it has stride 16 already); "
                             "drop --dilation or use a ResNet --backbone")
        trunk = tiny_trunk()
        self.name = "tiny"
        layers = {f"layer{len(TINY_CHANNELS) - 1}": "0"}
        if return_interm_layers:
            layers = {"layer1": "layer1", "layer2": "layer2", **layers}
        self.body = IntermediateLayerGetter(trunk, return_layers=layers)
        self.num_channels = TINY_CHANNELS[-1]
        self.fpn_layers = ("0", "layer2", "layer1")  # the last map is already at stride 16
        self.fpn_channels = tuple(reversed(TINY_CHANNELS[1:]))
        self.train_backbone = train_backbone
        self.body.requires_grad_(train_backbone)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W], mask [B, H, W] -> features [B, 256, h, w], mask [B, h, w] (h = ceil(H / 16))."""
        maps, mask = self.features(images, mask)
        return maps["0"], mask

    def features(self, images: Tensor, mask: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """images [B, 3, H, W], mask [B, H, W] (True = padding) -> ({"0": the last map} (and "layer1", "layer2"
        when built for them), the mask at the last map [B, h, w]).

        The padding is zeroed after every convolution's BatchNorm and ReLU, so each convolution reads zeros
        there as it reads its own zero padding at an image's border: an image gives the same features alone as
        in a padded batch. A stride-s convolution (3x3, padding 1) is centred on every s-th input, so its output
        is padding where that input is.
        """
        keep = (~mask)[:, None].to(images.dtype)  # [B, 1, H, W]
        x = images * keep
        maps: dict[str, Tensor] = {}
        for name, stage in self.body.items():
            for module in stage:
                x = module(x)
                if isinstance(module, nn.Conv2d):
                    keep = keep[:, :, :: module.stride[0], :: module.stride[1]]
                elif isinstance(module, nn.ReLU):
                    x = x * keep
            if name in self.body.return_layers:
                maps[self.body.return_layers[name]] = x
        return maps, keep[:, 0] == 0

    def train(self, mode: bool = True) -> TinyBackbone:
        super().train(mode)
        if not self.train_backbone:  # frozen: the BatchNorms keep their running statistics
            self.body.eval()
        return self
