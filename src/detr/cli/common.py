"""What several commands share: the detector flags, the `Detector` they build, image collection."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..registry import PUBLISHED
from .flags import add_size_flags, add_weights_flags

if TYPE_CHECKING:
    from ..inference.detector import Detector

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def threshold_type(text: str) -> float:
    """argparse type for a score threshold in [0, 1]."""
    from ..runtime import check_threshold

    try:
        return check_threshold(float(text), "threshold")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_detector_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a `Detector`: the weights group, --threshold and the input sizes."""
    add_weights_flags(parser, weights="detr_r50", device="cpu",
                      weights_help=f"checkpoint file (ours or official), a transformers folder or HuggingFace hub "
                                   f"id (facebook/detr-resnet-50), or a published name: {', '.join(PUBLISHED)} "
                                   "(downloaded once; default detr_r50)")
    parser.add_argument("--threshold", type=threshold_type, default=0.7, help="minimum score, in [0, 1] (default 0.7)")
    add_size_flags(parser, scales=False, helps={
        "val_scale": "short side of the resized input (default: the checkpoint's, 800 for official files)",
        "max_size": "cap on the long side (default: the checkpoint's, 1333 for official files)"})


def detector_from_args(args: argparse.Namespace) -> Detector:
    """The Detector that `add_detector_flags`' options describe."""
    from ..inference.detector import Detector

    overrides: dict[str, Any] = {k: getattr(args, k) for k in ("nheads", "dilation") if getattr(args, k)}
    return Detector.from_pretrained(args.weights, device=args.device, threshold=args.threshold, model=args.model,
                                    size=args.val_scale, max_size=args.max_size, amp=getattr(args, "amp", "none"),
                                    **overrides)


def collect_images(inputs: list[str]) -> list[Path]:
    """Files named on the command line, and the image files (by suffix) of named folders, sorted."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise ValueError(f"{item}: no such file or folder")
    if not found:
        raise ValueError(f"no image files found in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


