"""ImageNet's per-channel pixel statistics, with which every pretrained trunk normalises its input images."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, pixels in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
