"""Postprocessing: the model's outputs -> detections, instance masks and panoptic segmentations in pixels."""

from .boxes import postprocess
from .masks import postprocess_panoptic, postprocess_segmentation

__all__ = ["postprocess", "postprocess_panoptic", "postprocess_segmentation"]
