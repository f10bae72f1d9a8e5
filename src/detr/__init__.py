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
