"""The official DETR augmentation recipe, written with torchvision.transforms.v2.

Every transform takes `(image, target)` where the image is a PIL image or tensor and
`target["boxes"]` is a `tv_tensors.BoundingBoxes` in XYXY pixels, and returns a normalised float
image [3, H, W] and a target whose boxes are cxcywh in [0, 1] (plain tensor) with `size` = (H, W).
Random choices use torch's RNG, so `torch.manual_seed` (and DataLoader worker seeding) make
augmentation reproducible.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..config import DataConfig
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD  # importable from here too

SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800: short side for training
MAX_SIZE = 1333
CROP = ((400, 500, 600), 384, 600)  # (resize scales before cropping, min crop side, max crop side)


def resize_shape(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """(h, w) with the short side `size`, the long side at most `max_size`, rounded as the official code."""
    short, long = min(width, height), max(width, height)
    cap = None
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
        if size < 1:  # extreme aspect ratio (official code would fail): 1 px short side, capped long side
            size, cap = 1, max_size
    if short == size and cap is None:
        return height, width
    new_long = int(size * long / short)
    new_long = min(new_long, cap) if cap is not None else new_long
    return (new_long, size) if width < height else (size, new_long)


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """(h, w) of the image among a transform's inputs."""
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, Image.Image)):
            h, w = F.get_size(inpt)
            return h, w
    for inpt in flat_inputs:  # a bare tensor image (no tv_tensors.Image given)
        if isinstance(inpt, Tensor) and not isinstance(inpt, tv_tensors.TVTensor):
            return int(inpt.shape[-2]), int(inpt.shape[-1])
    raise ValueError("no image among the transform's inputs")


def _target(outputs: Any) -> dict[str, Any] | None:
    if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], dict):
        return outputs[1]
    return None


class RandomShortSideResize(v2.Transform):
    """Resize the short side to a random one of `sizes` (long side <= `max_size`); scales `area`."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        super().__init__()
        if not sizes or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must be positive integers, got {list(sizes)}")
        self.sizes = list(sizes)
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _image_size(flat_inputs)
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return {"size": list(resize_shape(h, w, size, self.max_size)), "before": (h, w)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)

    def forward(self, *inputs: Any) -> Any:
        h, w = _image_size([inputs[0]])
        outputs = super().forward(*inputs)
        target = _target(outputs)
        if target is not None and "area" in target:
            nh, nw = _image_size([outputs[0]])
            target["area"] = target["area"] * (nh * nw / (h * w))
        return outputs


class RandomSizeCrop(v2.Transform):
    """Crop a random region with sides in [min_size, max_size] (capped by the image); boxes are
    clipped by v2 and `area` becomes the clipped box area, as in the official code."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _image_size(flat_inputs)

        def randint(lo: int, hi: int) -> int:  # inclusive
            return int(torch.randint(lo, hi + 1, ()))

        cw = randint(min(self.min_size, w), min(w, self.max_size))
        ch = randint(min(self.min_size, h), min(h, self.max_size))
        return {"top": randint(0, h - ch), "left": randint(0, w - cw), "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)

    def forward(self, *inputs: Any) -> Any:
        outputs = super().forward(*inputs)
        target = _target(outputs)
        if target is not None and "boxes" in target and "area" in target:
            b = target["boxes"].as_subclass(Tensor)  # [N, 4] xyxy, already clipped to the crop
            target["area"] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        return outputs


class NormalizeBoxes(v2.Transform):
    """Last step: boxes to cxcywh / (W, H) as a plain tensor, `size` = (H, W), plain image tensor."""

    def forward(self, *inputs: Any) -> Any:
        image = inputs[0]
        h, w = _image_size([image])
        image = image.as_subclass(Tensor) if isinstance(image, Tensor) else image
        if len(inputs) == 1:
            return image
        target = dict(inputs[1])
        if "boxes" in target:
            boxes = F.convert_bounding_box_format(target["boxes"], new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            target["boxes"] = boxes.as_subclass(Tensor).to(torch.float32) / scale  # [N, 4] cxcywh in [0, 1]
        if "masks" in target:  # v2 resized, cropped and flipped them with the image (nearest neighbour)
            target["masks"] = target["masks"].as_subclass(Tensor).bool()  # [N, H, W]
        target["size"] = torch.tensor([h, w])
        return image, target


def _sanitized_fields(inputs: Any) -> tuple[Tensor, ...]:
    """Per-box target fields that SanitizeBoundingBoxes must filter along with the boxes (it filters
    `tv_tensors.Mask` instance masks [N, H, W] by itself)."""
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "area", "iscrowd") if k in target)


def make_transforms(train: bool, scales: Sequence[int] = SCALES, max_size: int = MAX_SIZE,
                    crop: tuple[Sequence[int], int, int] | None = CROP,
                    val_scale: int | None = None) -> v2.Compose:
    """The official train or val pipeline, with configurable sizes.

    Args:
        train: random flip + (multi-scale resize | resize, crop, multi-scale resize); else one resize.
        scales: short-side sizes for training (official 480..800 step 32).
        max_size: cap on the long side (official 1333).
        crop: (resize scales before the crop, min crop side, max crop side); None drops that branch.
        val_scale: short side for validation; default max(scales) (800 for the official scales).
    """
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), NormalizeBoxes()]
    if not train:
        size = val_scale if val_scale is not None else max(scales)
        return v2.Compose([v2.ToImage(), RandomShortSideResize([size], max_size), *tail])
    resize: v2.Transform = RandomShortSideResize(scales, max_size)
    if crop is not None:
        crop_scales, min_crop, max_crop = crop
        resize = v2.RandomChoice([resize, v2.Compose([
            RandomShortSideResize(crop_scales),
            RandomSizeCrop(min_crop, max_crop),
            v2.SanitizeBoundingBoxes(labels_getter=_sanitized_fields),  # drops boxes emptied by the crop
            RandomShortSideResize(scales, max_size),
        ])])
    return v2.Compose([v2.ToImage(), v2.RandomHorizontalFlip(), resize, *tail])


def val_short_side(data: DataConfig) -> int:
    """The short side validation resizes to: `val_scale`, else the largest training scale (800 for the paper's)."""
    return data.val_scale if data.val_scale is not None else max(data.scales or SCALES)


@functools.lru_cache(maxsize=8)
def _val_pipeline(size: int, max_size: int) -> v2.Compose:
    return make_transforms(train=False, val_scale=size, max_size=max_size)


def preprocess(image: Image.Image | Tensor, size: int = 800, max_size: int = MAX_SIZE) -> Tensor:
    """One image (RGB PIL, or uint8/float [3, H, W] tensor) -> normalised float [3, H', W'] as in validation."""
    if isinstance(image, Image.Image) and image.mode != "RGB":
        raise ValueError(f"preprocess: expected an RGB image, got mode {image.mode!r} (see detr.data.load_image)")
    return _val_pipeline(size, max_size)(image)
