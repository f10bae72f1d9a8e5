"""Inference: `Detector` (published names, official files, our checkpoints), export, attention maps, pictures."""

from .detector import Detections, Detector

__all__ = ["Detections", "Detector"]
