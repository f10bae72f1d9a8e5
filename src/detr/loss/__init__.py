"""DETR's set loss and its box geometry: Hungarian matcher, criterion (mask losses too), postprocessing."""

from .criterion import SetCriterion, create_criterion
from .matcher import HungarianMatcher
from .postprocess import postprocess
from .postprocess_masks import postprocess_panoptic, postprocess_segmentation

__all__ = ["HungarianMatcher", "SetCriterion", "create_criterion", "postprocess", "postprocess_panoptic",
           "postprocess_segmentation"]
