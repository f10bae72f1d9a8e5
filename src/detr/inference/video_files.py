"""A video run written to files: the annotated video and one JSON line per detected frame (`frames.jsonl`).

Both are written as the frames come, so a run that stops (a damaged file, a dropped stream, Ctrl-C, an error)
keeps a finalised video and a complete JSON line for every frame before the stop.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .detector import Detector, VideoFrame
from .video import VideoError, VideoInput, VideoSource, VideoWriter, check_stride
from .visualize import draw_detections, draw_tracked

log = logging.getLogger(__name__)

VIDEO_NAME = "annotated.mp4"
LINES_NAME = "frames.jsonl"


@dataclass
class VideoRun:
    """What `predict_video` wrote.

    Attributes:
        video: the annotated video (every detected frame, at the source's rate / stride).
        lines: frames.jsonl, one JSON object per detected frame.
        frames: detected (and written) frames.
        detections: boxes over all of them.
        ended_early: why the source ended before its declared end ("" when it did not).
    """

    video: Path
    lines: Path
    frames: int
    detections: int
    ended_early: str


def frame_record(frame: VideoFrame) -> dict[str, Any]:
    """One frames.jsonl line: {"frame", "time" (s), "boxes" ([x0, y0, x1, y1] pixels), "scores", "labels",
    "names"}, and "track_ids" (-1: not yet confirmed) when tracking."""
    found = frame.detections
    record: dict[str, Any] = {
        "frame": frame.index, "time": round(frame.time, 6),
        "boxes": [[round(v, 2) for v in box] for box in found.boxes.tolist()],  # [N, 4]
        "scores": [round(v, 5) for v in found.scores.tolist()],
        "labels": [int(v) for v in found.labels.tolist()],
        "names": list(found.names),
    }
    if frame.track_ids is not None:
        record["track_ids"] = [int(v) for v in frame.track_ids]
    return record


def draw_frame(frame: VideoFrame) -> np.ndarray:
    """The frame [H, W, 3] uint8 with its boxes, labels and scores (and track ids) drawn."""
    image = Image.fromarray(frame.image)
    if frame.track_ids is None:
        return np.asarray(draw_detections(image, frame.detections))
    return np.asarray(draw_tracked(image, frame.detections, frame.track_ids.tolist()))


def predict_video(detector: Detector, source: VideoInput, output_dir: str | os.PathLike, stride: int = 1,
                  track: bool = False, threshold: float | None = None,
                  on_frame: Callable[[VideoFrame], None] | None = None) -> VideoRun:
    """Run `detector` over a video file, webcam or stream; write annotated.mp4 and frames.jsonl in `output_dir`.

    With `stride` K only every K-th frame is detected, and only those are written: the video holds them at
    the source's rate / K (same duration, every frame annotated) and frames.jsonl keeps the source's frame
    numbers and times. `on_frame` is called after each frame is written (progress).

    Raises:
        VideoError: the source cannot be opened, or the output would overwrite it.
        MissingPackageError: PyAV (the `video` extra) or, with `track`, trackers (the `track` extra) is missing.
    """
    check_stride(stride)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    video, lines = out / VIDEO_NAME, out / LINES_NAME
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file() and Path(source).resolve() == video.resolve():
        raise VideoError(f"{source}: the output video would overwrite it; give another --output_dir")
    frames = boxes = 0
    with VideoSource(source) as src:
        detected = detector.video(src, stride=stride, track=track, threshold=threshold)  # checks --track first
        with VideoWriter(video, src.rate / stride) as writer, open(lines, "w", encoding="utf-8") as jsonl:
            for frame in detected:
                writer.write(draw_frame(frame))
                jsonl.write(json.dumps(frame_record(frame)) + "\n")
                jsonl.flush()  # a killed run keeps every line written
                frames, boxes = frames + 1, boxes + len(frame.detections)
                if on_frame is not None:
                    on_frame(frame)
        if frames == 0:
            log.warning("%s: no frame decoded; nothing written to %s", src.name, video)
        return VideoRun(video, lines, frames, boxes, src.ended_early)
