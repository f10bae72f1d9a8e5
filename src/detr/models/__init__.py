"""DETR's modules: backbone, position encodings, transformer and the model itself."""

from .detr import DETR, MODELS, convert_official_state_dict, create_model, list_models, pad_images

__all__ = ["DETR", "MODELS", "convert_official_state_dict", "create_model", "list_models", "pad_images"]
