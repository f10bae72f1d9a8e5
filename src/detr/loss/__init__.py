"""DETR's set loss and its box geometry: Hungarian matcher, criterion, postprocessing."""

from .criterion import SetCriterion, create_criterion
from .matcher import HungarianMatcher
from .postprocess import postprocess

__all__ = ["HungarianMatcher", "SetCriterion", "create_criterion", "postprocess"]
