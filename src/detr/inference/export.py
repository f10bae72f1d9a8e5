"""Export a DETR to ONNX with a dynamic batch size and image size.

The exported graph takes a padded, ImageNet-normalised batch "images" [B, 3, H, W] (no
mask: every pixel counts as image) and returns "pred_logits" [B, Q, C+1] and "pred_boxes"
[B, Q, 4] (cx, cy, w, h in [0, 1]) exactly as `DETR.forward` does without auxiliary outputs.
Needs the `export` extra (onnx; onnxruntime to verify).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import output_file
from ..models.attention import HeadAttention
from ..models.build import Model

OPSET = 17


class _ExportWrapper(nn.Module):
    """DETR as a function of one image batch with two tensor outputs."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images)
        return out["pred_logits"], out["pred_boxes"]


def exportable(model: Model) -> nn.Module:
    """A copy of `model` in eval mode with export-safe attention, wrapped to return (logits, boxes)."""
    model = copy.deepcopy(model).eval().cpu()
    model.aux_loss = False
    for module in model.modules():
        if isinstance(module, HeadAttention):
            module.explicit = True  # the fused kernel does not export correctly (see attention.py)
    return _ExportWrapper(model)


def export_onnx(model: Model, output: str | os.PathLike, height: int = 800, width: int = 1066,
                opset: int = OPSET) -> Path:
    """Write `model` as an ONNX file with dynamic batch, height and width.

    Args:
        model: a DETR or ConditionalDETR (copied; not modified).
        output: the .onnx file to write (its folder must exist).
        height, width: size of the example input used to trace the graph.
        opset: ONNX opset version.

    Returns:
        The written path.

    Example:
        >>> export_onnx(Detector.from_pretrained("detr_r50").model, "detr_r50.onnx")
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail early with a clear message)
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install 'detr-aligned[export]'") from None
    output = output_file(output)
    example = torch.zeros(1, 3, height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter about the TorchScript exporter
        torch.onnx.export(
            exportable(model), (example,), str(output), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=["pred_logits", "pred_boxes"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                          "pred_logits": {0: "batch"}, "pred_boxes": {0: "batch"}},
        )
    return output


def onnx_outputs(path: str | os.PathLike, images: Tensor) -> tuple[Tensor, Tensor]:
    """Run an exported model with onnxruntime on CPU: images [B, 3, H, W] -> (logits, boxes)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("running ONNX models needs onnxruntime: pip install 'detr-aligned[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(["pred_logits", "pred_boxes"], {"images": images.cpu().numpy()})
    return torch.from_numpy(logits), torch.from_numpy(boxes)
