"""`detr predict`: detect objects in images; write one JSON line per image as it finishes (detections.jsonl), then
COCO-results JSON, and annotated PNGs (with --masks: instance masks, panoptic PNGs and their COCO panoptic JSON too).
Resumable (--resume); under `torchrun --nproc_per_node=N -m detr predict` the processes share the images."""

from __future__ import annotations

import argparse
import sys

from ..inference.defaults import DRAW_LIMIT
from . import show_progress
from .common import add_detector_flags, collect_images, detector_from_args
from .flags import add_flags, parse_and_run
from .predict_video import add_video_arguments, run_video, wants_video


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|VIDEO",
                        help="image files and/or folders of images; or one video file, webcam index or stream URL")
    add_detector_flags(parser)
    add_flags(parser, ["output_dir", "amp"], {"output_dir": "predictions", "amp": "none"},
              {"output_dir": "folder for the results (default ./predictions)",
               "amp": "run the model under autocast: bf16 (CPU or GPU; faster on CPUs with AVX512-BF16, slightly "
                      "different boxes), fp16 (GPU) (default none: fp32)"})
    parser.add_argument("--attention", action="store_true",
                        help="also write attention pictures (decoder per object, encoder at --pixel; one image per "
                             "forward pass)")
    parser.add_argument("--pixel", default=None, help="x,y pixel for the encoder attention (default: best box centre)")
    parser.add_argument("--masks", action="store_true",
                        help="segmentation model (e.g. --weights detr_r50_panoptic): draw translucent masks; also "
                             "write masks.json (COCO RLE results), panoptic/NAME.png and panoptic.json (COCO panoptic)")
    add_video_arguments(parser)
    add_job_flags(parser.add_argument_group("large jobs"))


def add_job_flags(group: argparse._ArgumentGroup) -> None:
    """Batching, decoding workers, pictures and resuming."""
    add_flags(group, ["batch_size", "num_workers"], {"batch_size": 1, "num_workers": 0}, {
        "batch_size": "images per forward pass, grouped by shape so they pad little (default 1: the results are "
                      "exactly those of one image at a time, and a CPU gains little from batches; on a GPU try 8)",
        "num_workers": "processes decoding images while the model runs (default 0: in this process)"})
    draw = group.add_mutually_exclusive_group()
    draw.add_argument("--draw", action="store_true", default=None,
                      help=f"write an annotated NAME.png per image (default: only for up to {DRAW_LIMIT} images)")
    draw.add_argument("--no_draw", dest="draw", action="store_false", help="write no annotated pictures")
    group.add_argument("--resume", action="store_true",
                       help="continue an earlier run into the same --output_dir: its finished images (lines of "
                            "detections.jsonl) are kept and skipped; without it their results are replaced")


def run(args: argparse.Namespace) -> int:
    """Detect objects in a video, webcam or stream (`predict_video`), or in the images of `args.inputs`."""
    if wants_video(args):  # a video, webcam or stream: annotated.mp4 and frames.jsonl
        return run_video(args)
    return predict_folder(args)


def predict_folder(args: argparse.Namespace) -> int:
    """Detect objects in every image; stream detections.jsonl, then write detections.json, images.json (and with
    --masks masks.json, panoptic/*.png and panoptic.json), and annotated PNGs when drawing.

    Returns 0 when every image was processed, 1 when some were skipped (reported on stderr).
    """
    # imported here, not at the top: they bring torch, which the parser and --help do not need
    from ..checkpoint import output_folder
    from ..distributed import cleanup, init_from_env
    from ..inference.batch import PredictOptions, predict_images
    from ..inference.explain import parse_pixel
    from ..runtime import resolve_device

    if args.batch_size < 1 or args.num_workers < 0:
        raise ValueError(f"--batch_size must be at least 1 and --num_workers at least 0, got {args.batch_size} "
                         f"and {args.num_workers}")
    pixel = parse_pixel(args.pixel) if args.pixel else None
    paths = collect_images(args.inputs)
    out = output_folder(args.output_dir, "--output_dir")
    started = init_from_env(resolve_device(args.device, "--device"))  # first: it picks this process's GPU
    try:
        detector = detector_from_args(args)
        if args.masks and not detector.has_masks:
            raise ValueError(f"--masks: --weights {args.weights} is a detection model without a mask head; give a "
                             "segmentation model, e.g. --weights detr_r50_panoptic or a checkpoint trained with "
                             "--masks")
        options = PredictOptions(batch_size=args.batch_size, num_workers=args.num_workers, draw=args.draw,
                                 resume=args.resume, masks=args.masks, attention=args.attention, pixel=pixel,
                                 progress=show_progress() and len(paths) > 1, on_skip=_report_skip)
        summary = predict_images(detector, paths, out, options)
    finally:
        if started:
            cleanup()
    if summary is None:  # a torchrun process other than 0: process 0 reports
        return 0
    skipped = [name for name, _ in summary.skipped]
    print(f"detr predict: {summary.images} image(s), {summary.detections} detection(s) -> {out}"
          + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else ""))
    return 1 if skipped else 0


def _report_skip(path: str, reason: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"detr predict: skipped {path}: {reason}", file=sys.stderr)


def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr predict", __doc__, add_arguments, run)
