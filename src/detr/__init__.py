"""DETR: End-to-End Object Detection with Transformers, in PyTorch.

The public API:

    model = detr.create_model("detr_r50", num_classes=91)   # or "conditional_detr_r50" (Conditional DETR)
    criterion = detr.create_criterion(num_classes=91)
    results = detr.postprocess(model(images), target_sizes)
    panoptic = detr.postprocess_panoptic(segm_model(images), processed_sizes)   # "detr_r50_panoptic", masks=True
    detector = detr.Detector.from_pretrained("detr_r50")
    result = detr.train(data="datasets/pets", epochs=20, output_dir="runs/pets")  # COCO/Roboflow/YOLO/VOC folder
    state, model_config = detr.convert_hf_state_dict(hf_model.state_dict(), hf_model.config)  # transformers weights
    results = detr.panoptic_quality(gt_json, gt_folder, pred_json, pred_folder)  # PQ / SQ / RQ as panopticapi
    state, model_config = detr.convert_paddle_state_dict(detr.read_pdparams("detr.pdparams"))  # PaddleDetection
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports each name on first use
    from .config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig
    from .evaluation.panoptic import panoptic_quality
    from .inference.detector import Detections, Detector
    from .loss.criterion import SetCriterion, create_criterion
    from .loss.matcher import HungarianMatcher
    from .models.build import create_model, list_models
    from .models.conditional import ConditionalDETR
    from .models.detr import DETR
    from .models.segmentation import DETRsegm
    from .postprocessing import postprocess, postprocess_panoptic, postprocess_segmentation
    from .training.api import TrainResult, train
    from .weights.from_hf import convert_hf_state_dict
    from .weights.from_official import convert_official_state_dict
    from .weights.from_paddle import convert_paddle_state_dict, read_pdparams
    from .weights.identify import config_from_checkpoint

# public name -> the module that defines it; nothing heavy (torch) is imported by `import detr`, so that
# `detr --help` starts fast
_EXPORTS: dict[str, str] = {
    "Config": "config",
    "DataConfig": "config",
    "LossConfig": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "panoptic_quality": "evaluation.panoptic",
    "Detections": "inference.detector",
    "Detector": "inference.detector",
    "SetCriterion": "loss.criterion",
    "create_criterion": "loss.criterion",
    "HungarianMatcher": "loss.matcher",
    "create_model": "models.build",
    "list_models": "models.build",
    "ConditionalDETR": "models.conditional",
    "DETR": "models.detr",
    "DETRsegm": "models.segmentation",
    "postprocess": "postprocessing",
    "postprocess_panoptic": "postprocessing",
    "postprocess_segmentation": "postprocessing",
    "TrainResult": "training.api",
    "train": "training.api",
    "convert_hf_state_dict": "weights.from_hf",
    "convert_official_state_dict": "weights.from_official",
    "convert_paddle_state_dict": "weights.from_paddle",
    "read_pdparams": "weights.from_paddle",
    "config_from_checkpoint": "weights.identify",
}

__version__ = "0.1.0"

__all__ = [
    "DETR",
    "ConditionalDETR",
    "Config",
    "DETRsegm",
    "DataConfig",
    "Detections",
    "Detector",
    "HungarianMatcher",
    "LossConfig",
    "ModelConfig",
    "SetCriterion",
    "TrainConfig",
    "TrainResult",
    "config_from_checkpoint",
    "convert_hf_state_dict",
    "convert_official_state_dict",
    "convert_paddle_state_dict",
    "create_criterion",
    "create_model",
    "list_models",
    "panoptic_quality",
    "postprocess",
    "read_pdparams",
    "train",
    "postprocess_panoptic",
    "postprocess_segmentation",
]


def __getattr__(name: str) -> Any:
    """A public name (or a subpackage, as `detr.models`), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
