"""`detr explain`: attention maps of a detection (decoder per object, encoder at a pixel) as PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_detector_flags, detector_from_args
from .flags import add_flags, parse_and_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="one image file")
    add_detector_flags(parser)
    add_flags(parser, ["output_dir"], {"output_dir": "attention"},
              {"output_dir": "folder for the PNGs (default ./attention)"})
    parser.add_argument("--pixel", default=None, help="x,y pixel for the encoder attention (default: best box centre)")


def run(args: argparse.Namespace) -> int:
    """Write one decoder-attention PNG per detected object and one encoder-attention PNG."""
    # imported here, not at the top: they bring torch, which the parser and --help do not need
    from ..checkpoint import output_folder
    from ..inference.detector import to_image_tensor
    from ..inference.explain import explain, parse_pixel, rgb_image, save_attention_pictures

    pixel = parse_pixel(args.pixel) if args.pixel else None
    image = to_image_tensor(Path(args.image))
    out = output_folder(args.output_dir, "--output_dir")
    maps = explain(detector_from_args(args), image, pixel=pixel)
    paths = save_attention_pictures(rgb_image(image), maps, out)
    print(f"detr explain: {len(maps.detections)} object(s); {len(paths)} picture(s) in {out}")
    return 0


def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr explain", __doc__, add_arguments, run)
