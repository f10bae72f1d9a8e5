"""`detr export`: a model as ONNX with dynamic batch and image size, optionally checked with onnxruntime."""

from __future__ import annotations

import argparse

import torch

from ..checkpoint import output_file
from ..inference.export import export_onnx, onnx_outputs
from . import parse_and_run
from .common import add_weights_arguments, detector_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_arguments(parser)
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    parser.add_argument("--output", default="detr.onnx", help="file to write (default detr.onnx)")
    parser.add_argument("--verify", action="store_true", help="compare onnxruntime with PyTorch on a random input")


def run(args: argparse.Namespace) -> int:
    """Export the model to ONNX (dynamic batch and image size), optionally checking parity."""
    output_file(args.output)
    detector = detector_from_args(args)
    path = export_onnx(detector.model.cpu(), args.output)
    print(f"detr export: wrote {path} (input 'images' [B, 3, H, W] normalised; outputs pred_logits, pred_boxes)")
    if args.verify:
        x = torch.randn(2, 3, 320, 416)
        logits, boxes = onnx_outputs(path, x)
        with torch.inference_mode():
            ref = detector.model.cpu()(x)
        diff = max(float((logits - ref["pred_logits"]).abs().max()), float((boxes - ref["pred_boxes"]).abs().max()))
        print(f"detr export: onnxruntime vs PyTorch max abs difference {diff:.2e}")
        if diff > 1e-4:
            raise ValueError(f"exported model differs from PyTorch by {diff:.2e} (> 1e-4)")
    return 0


def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr export", __doc__, add_arguments, run)
