"""DETR's network: backbone, position encodings, attention, transformer, and the model."""

from .detr import DETR, build_model, convert_official_state_dict, create_model, list_models, pad_images

__all__ = ["DETR", "build_model", "convert_official_state_dict", "create_model", "list_models", "pad_images"]
