"""DETR's set loss: Hungarian matcher and criterion (box, class and mask losses)."""

from .criterion import SetCriterion, create_criterion
from .matcher import HungarianMatcher

__all__ = ["HungarianMatcher", "SetCriterion", "create_criterion"]
