"""`detr export`: a model as ONNX or OpenVINO IR with dynamic batch and image size, optionally checked against
PyTorch (onnxruntime for ONNX, OpenVINO for the IR)."""

from __future__ import annotations

import argparse

from ..inference.defaults import FORMATS
from .common import add_detector_flags, detector_from_args
from .flags import parse_and_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_detector_flags(parser)
    parser.add_argument("--format", choices=list(FORMATS), default="onnx",
                        help="onnx, or openvino: an IR .xml with its .bin beside it (needs the openvino extra)")
    parser.add_argument("--output", default=None, help="file to write (default detr.onnx, or detr.xml for openvino)")
    parser.add_argument("--postprocess", action="store_true",
                        help="build postprocessing in: inputs pixel_values, orig_target_sizes [B, 2] (height, "
                             "width); outputs boxes (xyxy pixels), scores, labels, best first (not for segmentation models: "
                             "their plain graph adds pred_masks)")
    parser.add_argument("--top_k", type=int, default=None,
                        help="detections per image with --postprocess (default: every query for the softmax head, "
                             "100 for sigmoid heads)")
    parser.add_argument("--verify", action="store_true",
                        help="compare the runtime (onnxruntime, or OpenVINO at fp32) with PyTorch on random inputs")


def run(args: argparse.Namespace) -> int:
    """Export the model to ONNX or OpenVINO (dynamic batch and image size), optionally checking parity."""
    # imported here, not at the top: they bring torch, which the parser and --help do not need
    from ..checkpoint import output_file
    from ..inference import export as onnx_export

    if args.top_k is not None and not args.postprocess:
        raise ValueError("--top_k applies with --postprocess only")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top_k must be >= 1, got {args.top_k}")
    output = args.output or f"detr{FORMATS[args.format]}"
    if args.format == "openvino":
        if not output.endswith(".xml"):
            raise ValueError(f"--output: an OpenVINO IR is a .xml file (its .bin is written beside it), got {output}")
        onnx_export.import_openvino()  # a missing package named before the model is loaded
    output_file(output)
    detector = detector_from_args(args)
    if detector.model is None:
        raise ValueError(f"--weights {args.weights}: an exported file; export from the PyTorch weights it came from")
    model = detector.model.cpu()
    path = onnx_export.export_model(model, output, args.format, postprocess=args.postprocess, top_k=args.top_k,
                                    class_names=detector.class_names, size=detector.size,
                                    max_size=detector.max_size, category_ids=detector.category_ids)
    inputs = [onnx_export.INPUT] + [onnx_export.SIZES] * args.postprocess
    outputs = onnx_export.DETECTIONS if args.postprocess else onnx_export.output_names(model)
    k = f" [B, {onnx_export.detections_per_image(model, args.top_k)}]" if args.postprocess else ""
    print(f"detr export: wrote {path} (inputs {', '.join(inputs)}; outputs {', '.join(outputs)}{k})")
    if args.verify:
        diff = onnx_export.verify_export(model, path)
        runtime = "OpenVINO" if args.format == "openvino" else "onnxruntime"
        print(f"detr export: {runtime} vs PyTorch max abs difference {diff:.2e}")
    return 0


def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr export", __doc__, add_arguments, run)
