"""Export a DETR to ONNX with a dynamic batch size and image size, in the layout runtimes expect.

Two graphs (opset 17), both with a dynamic batch, height and width. Neither takes a mask: every
pixel counts as image, so a batch of different sizes must be run one image at a time (or padded,
which changes the result as padding without a mask does in PyTorch).

Plain graph (HF optimum's names for DETR):
    input  "pixel_values" float32 [B, 3, H, W]: RGB in [0, 1], resized (validation: short side 800,
           long side <= 1333), then normalised with ImageNet's mean (0.485, 0.456, 0.406) and
           std (0.229, 0.224, 0.225).
    output "logits" float32 [B, Q, C+1] for the softmax head (family "detr" as trained by the paper:
           softmax over C classes plus "no object", the last column) or [B, Q, C] for the sigmoid
           heads (class_loss "focal"/"varifocal", Conditional DETR's default: independent sigmoid
           per class, no "no object" column). C is num_classes (91 for COCO: category ids).
    output "pred_boxes" float32 [B, Q, 4]: (cx, cy, w, h) relative to the input image, in [0, 1].
    output "pred_masks" float32 [B, Q, ceil(H/4), ceil(W/4)], segmentation models only (DETRsegm): each
           query's mask logits at a quarter of the input (`detr.postprocess_segmentation` turns them into
           masks at the original size: upsample bilinearly, sigmoid > 0.5).

Postprocessing graph (`postprocess=True`, a graph a runtime can use as is, as RT-DETR exports it):
    inputs "pixel_values" as above, and "orig_target_sizes" int64 [B, 2] as (height, width) of each
           original image (what the official PostProcess takes).
    output "boxes" float32 [B, K, 4]: (x0, y0, x1, y1) pixels of the original image.
    output "scores" float32 [B, K], "labels" int64 [B, K]: best first (threshold them yourself).
    K: softmax head: every query (K = Q, the official PostProcess keeps one detection per query: its
       best real class), sorted by score; sigmoid heads: the top 100 (query, class) pairs over Q x C,
       as Conditional DETR's postprocessing and `detr.postprocess` keep. `top_k` sets K for both.

The postprocessing graph of a segmentation model is refused: it would need a per-image resize to each
original size inside the graph; export the plain graph and postprocess its pred_masks outside.

Both graphs carry, as JSON in the ONNX metadata_props under "detr", what `Detector` needs to run them
(class_loss, num_classes, masks, class_names, size, max_size, graph): `Detector.from_pretrained("m.onnx")`.

OpenVINO (`export_openvino`): the same ONNX graph converted by `openvino.convert_model` and saved as an IR
(.xml + .bin) with fp32 weights (OpenVINO's default fp16 compression would cost parity), the metadata in its
rt_info. Converting the ONNX graph rather than tracing the PyTorch model again keeps one traced graph, its
dynamic axes and its tested parity for both runtimes.

Needs the `export` extra (onnx; onnxruntime to run or verify), and the `openvino` extra for OpenVINO.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import output_file
from ..models.attention import HeadAttention
from ..models.build import Model
from ..models.segmentation import DETRsegm
from ..postprocessing.boxes import SIGMOID_HEADS, select_detections
from .defaults import FORMATS
from .runtimes import (
    DETECTIONS,
    INPUT,
    MASKS,
    METADATA_KEY,
    OUTPUTS,
    SIZES,
    OnnxRuntime,
    import_openvino,
    load_runtime,
)

OPSET = 17


def output_names(model: Model) -> tuple[str, ...]:
    """The plain graph's outputs: logits, pred_boxes (and pred_masks for a segmentation model)."""
    return (*OUTPUTS, MASKS) if isinstance(model, DETRsegm) else OUTPUTS


class _ExportWrapper(nn.Module):
    """DETR as a function of one image batch with tensor outputs (logits, boxes[, masks])."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        out = self.model(pixel_values)
        masks = (out["pred_masks"],) if "pred_masks" in out else ()  # [B, Q, H/4, W/4]
        return out["pred_logits"], out["pred_boxes"], *masks


class _PostprocessWrapper(nn.Module):
    """DETR followed by `select_detections`: (pixel_values, orig_target_sizes) -> boxes, scores, labels."""

    def __init__(self, model: Model, top_k: int):
        super().__init__()
        self.model, self.top_k = model, top_k

    def forward(self, pixel_values: Tensor, orig_target_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(pixel_values)
        scores, labels, boxes, _ = select_detections(out["pred_logits"], out["pred_boxes"], orig_target_sizes,
                                                     self.model.class_loss, self.top_k)
        return boxes, scores, labels


def exportable(model: Model) -> nn.Module:
    """A copy of `model` in eval mode with export-safe attention, wrapped to return (logits, boxes)."""
    model = copy.deepcopy(model).eval().cpu()
    model.aux_loss = False
    for module in model.modules():
        if isinstance(module, HeadAttention):
            module.explicit = True  # the fused kernel does not export correctly (see attention.py)
    return _ExportWrapper(model)


def detections_per_image(model: Model, top_k: int | None = None) -> int:
    """K of the postprocessing graph: `top_k` (default: every query for the softmax head, 100 for sigmoid
    heads), at most the number of candidates (Q, or Q x C for sigmoid heads)."""
    sigmoid = model.class_loss in SIGMOID_HEADS
    candidates = model.num_queries * (model.num_classes if sigmoid else 1)
    return min(top_k or (100 if sigmoid else model.num_queries), candidates)


def export_metadata(model: Model, postprocess: bool = False, class_names: Sequence[str] | None = None,
                    size: int = 800, max_size: int = 1333,
                    category_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """What `Detector` needs besides the graph: the head, the classes, their names and dataset ids (a --data
    model's label -> category id mapping), the resize."""
    return {"class_loss": model.class_loss, "num_classes": model.num_classes, "num_queries": model.num_queries,
            "masks": isinstance(model, DETRsegm), "class_names": None if class_names is None else list(class_names),
            "size": size, "max_size": max_size, "graph": "postprocess" if postprocess else "plain",
            "category_ids": None if category_ids is None else list(category_ids)}


def export_onnx(model: Model, output: str | os.PathLike, height: int = 800, width: int = 1066,
                opset: int = OPSET, postprocess: bool = False, top_k: int | None = None,
                class_names: Sequence[str] | None = None, size: int = 800, max_size: int = 1333,
                category_ids: Sequence[int] | None = None) -> Path:
    """Write `model` as an ONNX file with dynamic batch, height and width (layout: the module docstring).

    Args:
        model: a DETR or ConditionalDETR (copied; not modified).
        output: the .onnx file to write (its folder must exist).
        height, width: size of the example input used to trace the graph.
        opset: ONNX opset version.
        postprocess: write the graph with postprocessing (boxes, scores, labels) instead of the raw outputs.
        top_k: detections per image of the postprocessing graph (see `detections_per_image`).
        class_names, size, max_size: stored in the file's metadata for `Detector.from_pretrained` (None:
            the default names for the number of classes).

    Returns:
        The written path.

    Example:
        >>> export_onnx(Detector.from_pretrained("detr_r50").model, "detr_r50.onnx", postprocess=True)
    """
    if top_k is not None and not postprocess:
        raise ValueError("top_k applies to the postprocessing graph only: pass postprocess=True (--postprocess)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if postprocess and isinstance(model, DETRsegm):
        raise ValueError("postprocess=True (--postprocess) is not available for a segmentation model (the graph "
                         "would resize each mask to its original size); export without it: the plain graph outputs "
                         "logits, pred_boxes and pred_masks, for detr.postprocess_segmentation")
    try:
        import onnx  # the exporter needs it; fail early with a clear message
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install 'detr-aligned[export]'") from None
    output = output_file(output)
    net = exportable(model)
    example: tuple[Tensor, ...] = (torch.zeros(1, 3, height, width),)
    batch = {0: "batch"}
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}}
    if postprocess:
        net = _PostprocessWrapper(net.model, detections_per_image(model, top_k))
        example += (torch.tensor([[height, width]]),)
        inputs, outputs = [INPUT, SIZES], list(DETECTIONS)
    else:
        inputs, outputs = [INPUT], list(output_names(model))
    axes.update({name: batch for name in inputs[1:] + outputs})
    if MASKS in outputs:
        axes[MASKS] = {0: "batch", 2: "mask_height", 3: "mask_width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter about the TorchScript exporter
        torch.onnx.export(net, example, str(output), dynamo=False, opset_version=opset,
                          input_names=inputs, output_names=outputs, dynamic_axes=axes)
    proto = onnx.load(str(output))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(export_metadata(model, postprocess, class_names, size, max_size,
                                                                            category_ids))
    onnx.save(proto, str(output))
    return output


def export_openvino(model: Model, output: str | os.PathLike, height: int = 800, width: int = 1066,
                    postprocess: bool = False, top_k: int | None = None, class_names: Sequence[str] | None = None,
                    size: int = 800, max_size: int = 1333, category_ids: Sequence[int] | None = None) -> Path:
    """Write `model` as an OpenVINO IR (.xml + .bin beside it) with dynamic batch, height and width.

    The graph is `export_onnx`'s (same inputs, outputs and arguments), converted by OpenVINO with fp32
    weights; the metadata goes into the IR's rt_info.

    Returns:
        The written .xml path.
    """
    if Path(output).suffix != ".xml":
        raise ValueError(f"output: an OpenVINO IR is a .xml file (with its .bin beside it), got {output}")
    ov = import_openvino()
    output = output_file(output)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", height, width, postprocess=postprocess, top_k=top_k)
        net = ov.convert_model(str(onnx_path))
    meta = export_metadata(model, postprocess, class_names, size, max_size, category_ids)
    net.set_rt_info(json.dumps(meta), [METADATA_KEY, "metadata"])
    ov.save_model(net, str(output), compress_to_fp16=False)
    return output


def export_model(model: Model, output: str | os.PathLike, format: str = "onnx", **options: Any) -> Path:
    """`export_onnx` or `export_openvino` by `format` ("onnx" or "openvino"), with the same options."""
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    return (export_onnx if format == "onnx" else export_openvino)(model, output, **options)


def run_onnx(path: str | os.PathLike, pixel_values: Tensor, orig_target_sizes: Tensor | None = None
             ) -> dict[str, Tensor]:
    """Run an exported graph with onnxruntime on CPU; its outputs by name.

    Args:
        path: an .onnx file written by `export_onnx`.
        pixel_values: [B, 3, H, W] normalised images.
        orig_target_sizes: [B, 2] (height, width); required by the postprocessing graph only.
    """
    return OnnxRuntime(path, metadata={}).run(pixel_values, orig_target_sizes)


def onnx_outputs(path: str | os.PathLike, images: Tensor) -> tuple[Tensor, Tensor]:
    """Run a plain exported graph: images [B, 3, H, W] -> (logits, pred_boxes)."""
    out = run_onnx(path, images)
    return out["logits"], out["pred_boxes"]


def verify_export(model: Model, path: str | os.PathLike,
                sizes: tuple[tuple[int, int], ...] = ((320, 416), (384, 288)), tolerance: float = 1e-4) -> float:
    """Compare an exported graph (either kind; .onnx in onnxruntime, .xml in OpenVINO at fp32) with PyTorch on
    random batches of two at each size.

    Plain graph: logits, pred_boxes and pred_masks (segmentation models). Postprocessing graph: scores, and boxes as a fraction of the
    image size (pixels scale the float error with the image); labels must be equal wherever a score is
    not within `tolerance` of its neighbours (a tie may swap two detections in either runtime).

    Returns:
        The largest absolute difference.

    Raises:
        ValueError: a difference above `tolerance`, or a label that differs.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    orig = torch.tensor([[480, 640], [600, 400]])  # [2, 2] (height, width) of made-up original images
    runtime = load_runtime(path, metadata={})
    name = runtime.backend
    worst = 0.0
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=generator)
        got = runtime.run(x, orig)
        with torch.inference_mode():
            out = model.eval()(x.to(device))
        logits, boxes = out["pred_logits"].float().cpu(), out["pred_boxes"].float().cpu()
        if OUTPUTS[0] in got:
            worst = max(worst, _max_diff(got["logits"], logits), _max_diff(got["pred_boxes"], boxes))
            if MASKS in out or MASKS in got:
                if MASKS not in out or MASKS not in got:
                    raise ValueError(f"{path}: pred_masks in only one of the graph and the model; export this model")
                worst = max(worst, _max_diff(got[MASKS], out[MASKS].float().cpu()))
        else:
            expected = select_detections(logits, boxes, orig, model.class_loss, got["scores"].shape[1])
            diff, wrong = _compare_detections(got, *expected[:3], orig, tolerance)
            if wrong:
                raise ValueError(f"{path}: {name} and PyTorch give different labels to {wrong} detections")
            worst = max(worst, diff)
    if worst > tolerance:
        raise ValueError(f"{path}: {name} differs from PyTorch by {worst:.2e} (> {tolerance:g})")
    return worst


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _compare_detections(got: dict[str, Tensor], scores: Tensor, labels: Tensor, boxes: Tensor, sizes: Tensor,
                        tolerance: float) -> tuple[float, int]:
    """Largest score / relative box difference of best-first detections [B, K], and how many labels differ
    where the scores are untied."""
    gaps = scores[:, :-1] - scores[:, 1:]  # [B, K-1] >= 0: sorted best first
    far = gaps > tolerance
    ones = torch.ones_like(scores[:, :1], dtype=torch.bool)
    untied = torch.cat([ones, far], 1) & torch.cat([far, ones], 1)  # [B, K] apart from both neighbours
    wrong = int((got["labels"].ne(labels) & untied).sum())
    scale = sizes.flip(-1).repeat(1, 2).to(boxes.dtype)[:, None]  # [B, 1, 4] (w, h, w, h)
    box_diff = ((got["boxes"] - boxes) / scale).abs().amax(-1)  # [B, K]
    return max(_max_diff(got["scores"], scores), float(box_diff[untied].max()) if untied.any() else 0.0), wrong


verify_onnx = verify_export  # the name from before OpenVINO
