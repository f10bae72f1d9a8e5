"""Inference values that the `detr` parsers show in --help, in a module that imports nothing heavy: building a
parser (and `detr CMD --help`) needs no torch."""

from __future__ import annotations

# default: pictures for a job of at most this many images; beyond, writing them dominates the run
DRAW_LIMIT = 50
# `detr export --format` -> the suffix of the file written
FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
