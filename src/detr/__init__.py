"""DETR: End-to-End Object Detection with Transformers, in PyTorch.

The public API:

    model = detr.create_model("detr_r50", num_classes=91)
    criterion = detr.create_criterion(num_classes=91)
    results = detr.postprocess(model(images), target_sizes)
"""

from .config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig
from .criterion import SetCriterion, create_criterion
from .matcher import HungarianMatcher
from .models import DETR, convert_official_state_dict, create_model, list_models
from .postprocess import postprocess
from .predict import Detections, Detector

__version__ = "0.1.0"

__all__ = [
    "DETR",
    "Detections",
    "Detector",
    "Config",
    "DataConfig",
    "HungarianMatcher",
    "LossConfig",
    "ModelConfig",
    "SetCriterion",
    "TrainConfig",
    "convert_official_state_dict",
    "create_criterion",
    "create_model",
    "list_models",
    "postprocess",
]
