"""The networks: backbone, position encodings, attention, transformers, DETR and Conditional DETR."""

from .build import build_model, create_model, list_models
from .conditional import ConditionalDETR
from .detr import DETR, convert_official_state_dict, pad_images

__all__ = ["DETR", "ConditionalDETR", "build_model", "convert_official_state_dict", "create_model", "list_models",
           "pad_images"]
