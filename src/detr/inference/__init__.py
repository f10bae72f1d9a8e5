"""Inference: `Detector` (published names, official files, our checkpoints), export, attention maps, pictures."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .detector import Detections, Detector

__all__ = ["Detections", "Detector"]


def __getattr__(name: str) -> Any:
    """`Detector` and `Detections`, imported on first use: the parsers import `.defaults` without torch."""
    if name in __all__:
        return getattr(importlib.import_module(".detector", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
