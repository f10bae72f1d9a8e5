"""What `Detector` runs: a PyTorch model, or an exported graph in onnxruntime or OpenVINO.

Every runtime is called as `runtime(images, mask) -> outputs` with images [B, 3, H, W] normalised and mask
[B, H, W] (True: padding), and returns the model's float outputs by their PyTorch names (pred_logits,
pred_boxes, and pred_masks for a segmentation model). An exported graph takes no mask, so a padded batch is
run one image at a time on each image's own pixels (what PyTorch computes for that image alone).

An exported file carries what `Detector` needs besides the graph (class names, head, resize) as JSON: in the
ONNX file's metadata_props under "detr", in the OpenVINO IR's rt_info under ("detr", "metadata").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.build import Model
from ..models.segmentation import DETRsegm

INPUT, SIZES = "pixel_values", "orig_target_sizes"
OUTPUTS = ("logits", "pred_boxes")  # the plain graph
MASKS = "pred_masks"  # and its third output for a segmentation model
DETECTIONS = ("boxes", "scores", "labels")  # the postprocessing graph
METADATA_KEY = "detr"  # ONNX metadata_props key; OpenVINO rt_info path (METADATA_KEY, "metadata")
BACKENDS = ("onnxruntime", "openvino")
SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}
PRECISIONS = ("f32", "bf16")  # OpenVINO's CPU inference precisions


class ExportedFileError(ValueError):
    """An exported file that cannot be run as asked (wrong kind, no metadata, unknown backend)."""


class TorchRuntime:
    """A PyTorch DETR as a runtime: `model(images, mask)`."""

    def __init__(self, model: Model):
        self.model = model

    @property
    def class_loss(self) -> str:
        return self.model.class_loss

    @property
    def has_masks(self) -> bool:
        return isinstance(self.model, DETRsegm)

    def __call__(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """images [B, 3, H, W], mask [B, H, W] -> the model's outputs."""
        return self.model(images, mask)


class ExportedRuntime:
    """An exported graph and its metadata; subclasses implement `run` for one runtime.

    Args:
        path: the .onnx or .xml file.
        metadata: what `export_onnx` stored (empty for a file written elsewhere: runnable by `run` only).
    """

    backend = ""

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any]):
        self.path, self.metadata = Path(path), metadata

    def run(self, pixel_values: Tensor, orig_target_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """The graph's outputs by their exported names for [B, 3, H, W] normalised images."""
        raise NotImplementedError

    @property
    def input_names(self) -> list[str]:
        raise NotImplementedError

    def _need(self, key: str) -> Any:
        if key not in self.metadata:
            raise ExportedFileError(f"{self.path}: no '{key}' in its detr metadata (was it written by `detr export`?); "
                                f"re-export it with detr export")
        return self.metadata[key]

    @property
    def class_loss(self) -> str:
        return self._need("class_loss")

    @property
    def has_masks(self) -> bool:
        return bool(self._need("masks"))

    def check_detector(self) -> None:
        """Refuse a file `Detector` cannot run: no detr metadata, or a postprocessing graph (Detector needs the
        raw outputs and postprocesses them itself)."""
        for key in ("class_loss", "num_classes", "masks", "class_names", "size", "max_size"):
            self._need(key)
        if SIZES in self.input_names:
            raise ExportedFileError(f"{self.path}: a postprocessing graph (--postprocess) returns top-k detections "
                                f"without their queries; Detector runs the plain graph: export without --postprocess")

    def __call__(self, images: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """images [B, 3, H, W], mask [B, H, W] (True: padding) -> pred_logits, pred_boxes[, pred_masks]."""
        if mask is None or not bool(mask.any()):
            parts = [self.run(images)]
        else:  # each image alone on its own pixels: pad_images puts it at the top left
            parts = []
            for image, pad in zip(images, mask):
                h, w = int((~pad[:, 0]).sum()), int((~pad[0]).sum())
                parts.append(self.run(image[None, :, :h, :w]))
        outputs = {"pred_logits": torch.cat([p[OUTPUTS[0]] for p in parts]),
                   "pred_boxes": torch.cat([p[OUTPUTS[1]] for p in parts])}
        if MASKS in parts[0]:  # [1, Q, h/4, w/4] each, padded to the batch's size by repeating the edge, so
            # that the upsampling of the batch reads no made-up logits at an image's border
            height = max(p[MASKS].shape[-2] for p in parts)
            width = max(p[MASKS].shape[-1] for p in parts)
            outputs["pred_masks"] = torch.cat([F.pad(p[MASKS], (0, width - p[MASKS].shape[-1], 0,
                                                                height - p[MASKS].shape[-2]), mode="replicate")
                                               for p in parts])
        return {k: v.to(images.device) for k, v in outputs.items()}

    def _feed(self, pixel_values: Tensor, orig_target_sizes: Tensor | None) -> dict[str, np.ndarray]:
        feed = {INPUT: pixel_values.detach().cpu().float().numpy()}
        if SIZES in self.input_names:
            if orig_target_sizes is None:
                raise ExportedFileError(f"orig_target_sizes: {self.path} is a postprocessing graph; pass the [B, 2] "
                                    f"(height, width) of the original images")
            feed[SIZES] = torch.as_tensor(orig_target_sizes).to(torch.int64).cpu().numpy()
        return feed


class OnnxRuntime(ExportedRuntime):
    """An .onnx file in onnxruntime on the CPU, with PyTorch's thread count."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None, num_threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise ImportError("running ONNX models needs onnxruntime: pip install 'detr-aligned[export]'") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if metadata is None:
            text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            metadata = json.loads(text) if text else {}
        super().__init__(path, metadata)
        self.outputs = [o.name for o in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def run(self, pixel_values: Tensor, orig_target_sizes: Tensor | None = None) -> dict[str, Tensor]:
        values = self.session.run(self.outputs, self._feed(pixel_values, orig_target_sizes))
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs, values)}


class OpenVINORuntime(ExportedRuntime):
    """An OpenVINO IR (.xml + .bin) or an .onnx file compiled by OpenVINO for the CPU.

    Args:
        precision: "f32" (default: parity with PyTorch; OpenVINO would otherwise pick bf16 on a CPU that has
            it), or "bf16".
        num_threads: inference threads; default PyTorch's `torch.get_num_threads()`.
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None,
                 precision: str = "f32", num_threads: int | None = None):
        if precision not in PRECISIONS:
            raise ExportedFileError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        ov = import_openvino()
        core = ov.Core()
        net = core.read_model(str(path))
        if metadata is None:
            metadata = openvino_metadata(net)
        if not metadata and Path(path).suffix == ".onnx":
            metadata = onnx_metadata(path)
        super().__init__(path, metadata)
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": num_threads or torch.get_num_threads()}
        self.compiled = core.compile_model(net, "CPU", config)
        self._inputs = [i.get_any_name() for i in self.compiled.inputs]

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    def run(self, pixel_values: Tensor, orig_target_sizes: Tensor | None = None) -> dict[str, Tensor]:
        result = self.compiled(self._feed(pixel_values, orig_target_sizes))
        return {port.get_any_name(): torch.from_numpy(np.array(value)) for port, value in result.items()}


def import_openvino() -> Any:
    """The openvino package, or an ImportError that names the extra to install."""
    try:
        import openvino
    except ImportError:
        raise ImportError("OpenVINO export and inference need openvino: pip install 'detr-aligned[openvino]'") from None
    return openvino


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The detr metadata of an .onnx file ({} when it has none)."""
    try:
        import onnx
    except ImportError:
        raise ImportError("reading ONNX files needs onnx: pip install 'detr-aligned[export]'") from None
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


def openvino_metadata(net: Any) -> dict[str, Any]:
    """The detr metadata in an OpenVINO model's rt_info ({} when it has none)."""
    where = [METADATA_KEY, "metadata"]
    return json.loads(net.get_rt_info(where).astype(str)) if net.has_rt_info(where) else {}


def backend_for(path: str | os.PathLike, backend: str | None = None) -> str | None:
    """The runtime that runs `path`: `backend` if given, else by suffix (.onnx: onnxruntime, .xml: openvino);
    None for any other file (a PyTorch weights file)."""
    if backend is not None and backend not in BACKENDS:
        raise ExportedFileError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    suffix = Path(path).suffix.lower()
    if backend == "onnxruntime" and suffix != ".onnx":
        raise ExportedFileError(f"{path}: onnxruntime runs .onnx files only")
    if backend == "openvino" and suffix not in SUFFIXES:
        raise ExportedFileError(f"{path}: OpenVINO runs .xml (IR) or .onnx files")
    return backend or SUFFIXES.get(suffix)


def load_runtime(path: str | os.PathLike, backend: str | None = None, **options: Any) -> ExportedRuntime:
    """An exported file ready to run: onnxruntime for .onnx, OpenVINO for .xml, unless `backend` says.

    Args:
        path: the .onnx or .xml file.
        backend: "onnxruntime" or "openvino"; None: by suffix.
        **options: the runtime's options (OpenVINO: precision, num_threads; onnxruntime: num_threads).
    """
    if not Path(path).is_file():
        raise ExportedFileError(f"{path}: no such file")
    kind = backend_for(path, backend)
    if kind is None:
        raise ExportedFileError(f"{path}: not an exported file (.onnx or .xml) and no backend given")
    return (OnnxRuntime if kind == "onnxruntime" else OpenVINORuntime)(path, **options)
