"""The networks: backbone, position encodings, attention, transformers, DETR and Conditional DETR.

Only `nn.Module`s and `create_model`: reading and writing weight files is `detr.weights`."""

from .build import build_model, create_model, list_models
from .conditional import ConditionalDETR
from .detr import DETR, pad_images

__all__ = ["DETR", "ConditionalDETR", "build_model", "create_model", "list_models", "pad_images"]
