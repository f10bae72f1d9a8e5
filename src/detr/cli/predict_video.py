"""`detr predict` on a video file, a webcam index or a stream URL: the annotated video and frames.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import show_progress
from .common import detector_from_args


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """--track and --stride (video inputs only)."""
    parser.add_argument("--track", action="store_true",
                        help="video: ByteTrack ids, drawn and in frames.jsonl (needs the track extra)")
    parser.add_argument("--stride", type=int, default=1, metavar="K",
                        help="video: detect every K-th frame; only those are written, the video at the source's "
                             "rate / K (default 1)")


def wants_video(args: argparse.Namespace) -> bool:
    """Whether the inputs name a video, a webcam or a stream (else they are images)."""
    from ..inference.video import is_video_source  # after parsing: its module brings numpy

    return any(is_video_source(x) for x in args.inputs)


def run_video(args: argparse.Namespace) -> int:
    """Detect in one video, webcam or stream; write annotated.mp4 and frames.jsonl in --output_dir.

    Returns 0 when the source was read to its end, 1 when it ended early (damaged, truncated or dropped).
    """
    # imported here, not at the top: they bring torch, which the parser and --help do not need
    from tqdm import tqdm

    from ..checkpoint import output_folder
    from ..inference.video import check_packages, check_stride
    from ..inference.video_files import predict_video

    if len(args.inputs) != 1:
        raise ValueError(f"give one video, webcam or stream per run, not {len(args.inputs)} inputs "
                         f"({', '.join(args.inputs)}); images go in a run of their own")
    for flag in ("attention", "masks"):
        if getattr(args, flag, False):
            raise ValueError(f"--{flag} is for images; {args.inputs[0]} is a video")
    try:
        check_stride(args.stride)
    except ValueError:
        raise ValueError(f"--stride {args.stride}: expected a positive integer (1 = every frame)") from None
    source = args.inputs[0]
    if not (source.isdigit() or "://" in source or Path(source).is_file()):
        raise ValueError(f"{source}: no such video file")  # before a model is loaded for nothing
    check_packages(args.track)
    out = output_folder(args.output_dir, "--output_dir")
    detector = detector_from_args(args)
    with tqdm(desc="predict", unit="frame", disable=None if show_progress() else True) as bar:
        run = predict_video(detector, args.inputs[0], out, stride=args.stride, track=args.track,
                            on_frame=lambda _: bar.update())
    print(f"detr predict: {run.frames} frame(s), {run.detections} detection(s) -> {run.video}, {run.lines}")
    if run.ended_early:
        print(f"detr predict: warning: {run.ended_early}")
        return 1
    return 0
