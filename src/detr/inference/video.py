"""Video files, webcams and network streams: decoding (PyAV), encoding of the annotated frames, and ByteTrack ids.

PyAV is the `video` extra and Roboflow's `trackers` (ByteTrack, on supervision's Detections) the `track` extra;
both are imported inside the functions that need them. `Detector.video` runs a model over a `VideoSource`;
`inference.video_files.predict_video` writes the annotated video and one JSON line per frame.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Files read as videos by `detr predict` (by suffix; .gif stays an image).
VIDEO_SUFFIXES = {".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv",
                  ".3gp", ".ogv"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_RATE = Fraction(30)  # frames per second when a stream declares none
URL_TIMEOUT_S = (15.0, 10.0)  # (open, read) for network streams: a dropped stream ends the run, never hangs it

VideoInput = str | int | os.PathLike


class VideoError(ValueError):
    """A video source that cannot be opened or read, or a bad video argument."""


class MissingPackageError(ImportError, ValueError):
    """An optional package is not installed; the message names the extra that brings it."""


def is_video_source(text: str) -> bool:
    """Whether a command-line input names a video: a video file (by suffix), a webcam index or a stream URL."""
    return (text.isdigit() or text.lower().startswith(STREAM_SCHEMES)
            or Path(text).suffix.lower() in VIDEO_SUFFIXES)


def check_stride(stride: int) -> int:
    """`stride` if it is a positive integer, else a VideoError naming it."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise VideoError(f"stride: expected a positive integer (1 = every frame), got {stride!r}")
    return stride


def import_av() -> Any:
    """The `av` module (PyAV), or a MissingPackageError naming the `video` extra."""
    try:
        import av
    except ImportError:
        raise MissingPackageError("video input needs PyAV: pip install 'detr-aligned[video]'") from None
    return av


def import_tracker() -> Any:
    """trackers' `ByteTrackTracker` (it runs on supervision's Detections), or a MissingPackageError naming the
    `track` extra."""
    try:
        import supervision  # noqa: F401
        from trackers import ByteTrackTracker
    except ImportError:
        raise MissingPackageError("--track needs Roboflow's trackers and supervision: "
                                  "pip install 'detr-aligned[track]'") from None
    return ByteTrackTracker


def check_packages(track: bool = False) -> None:
    """A MissingPackageError naming the extra when PyAV (or, with `track`, trackers) is missing: before a
    model is loaded for nothing."""
    import_av()
    if track:
        import_tracker()


def _open(av: Any, source: VideoInput) -> Any:
    """An input container for a file, a webcam index (Linux: /dev/videoN, macOS: AVFoundation) or a URL."""
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    try:
        if isinstance(source, int) or text.isdigit():
            if sys.platform.startswith("linux"):
                return av.open(f"/dev/video{int(text)}", format="v4l2")
            if sys.platform == "darwin":
                return av.open(text, format="avfoundation")
            raise VideoError(f"webcam {text}: webcam indices are read on Linux and macOS only; give a stream URL")
        if text.lower().startswith(STREAM_SCHEMES):
            options = {"rtsp_transport": "tcp"} if text.lower().startswith("rtsp") else {}
            return av.open(text, options=options, timeout=URL_TIMEOUT_S)
        if not Path(text).is_file():
            raise VideoError(f"{text}: no such video file")
        return av.open(text)
    except av.FFmpegError as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VideoError(f"{text}: cannot open it as a video ({reason}); an MP4 cut short loses the index written "
                         "at its end and cannot be read at all") from None


class VideoSource:
    """The frames of a video file, webcam or stream, decoded in order (a context manager).

    Attributes:
        name: the source as given.
        rate: frames per second (the stream's average rate; 30 when it declares none).
        declared_frames: the frame count the file declares (0 when unknown: streams, most MKV/WebM).
        duration: the length in seconds the file declares, or None.
        decoded: frames decoded so far.
        ended_early: why the source ended before its declared end ("" when it did not).
    """

    def __init__(self, source: VideoInput):
        self._av = import_av()
        self.name = str(source)
        self._container = _open(self._av, source)
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.name}: has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps up with the model
        self.rate = Fraction(self._stream.average_rate or self._stream.guessed_rate or DEFAULT_RATE)
        self.declared_frames = int(self._stream.frames or 0)
        self.duration = self._declared_duration()
        self.decoded = 0
        self.ended_early = ""

    def _declared_duration(self) -> float | None:
        if self._stream.duration is not None and self._stream.time_base is not None:
            return float(self._stream.duration * self._stream.time_base)
        if self._container.duration is not None:  # microseconds
            return self._container.duration / self._av.time_base
        return None

    def frames(self, stride: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
        """(frame index from 0, seconds from the first frame, [H, W, 3] uint8 RGB) of every `stride`-th frame.

        Every frame is decoded (a frame depends on the ones before it); only the kept ones are converted. A
        decoding error or a file that ends before its declared length stops the iteration with a warning
        (`ended_early` says where); the frames before it are yielded as usual.
        """
        check_stride(stride)
        origin: float | None = None
        seconds = 0.0
        try:
            for frame in self._container.decode(self._stream):
                index = self.decoded
                self.decoded += 1
                stamp = float(frame.time) if frame.time is not None else index / float(self.rate)
                origin = stamp if origin is None else origin
                seconds = stamp - origin
                if index % stride == 0:
                    yield index, seconds, frame.to_ndarray(format="rgb24")
        except self._av.FFmpegError as e:  # a damaged file or a stream that dropped
            self._end(f"decoding failed ({getattr(e, 'strerror', None) or e})", seconds)
            return
        if self.declared_frames and self.decoded < self.declared_frames:
            self._end(f"the file declares {self.declared_frames} frames", seconds)
        elif self.duration and self.decoded and seconds + 1.5 / float(self.rate) < self.duration:
            self._end(f"the file declares {self.duration:.2f} s", seconds)

    def _end(self, why: str, seconds: float) -> None:
        self.ended_early = (f"{self.name}: ended after frame {self.decoded - 1} ({seconds:.2f} s): {why}; it is "
                            f"truncated or damaged, or the stream dropped; the {self.decoded} frames before are kept")
        log.warning(self.ended_early)

    def close(self) -> None:
        """Release the file, device or connection."""
        self._container.close()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class VideoWriter:
    """Encodes RGB frames into a video file at a fixed rate (H.264 where the build has libx264, else MPEG-4 Part 2).

    The file is opened at the first frame (its size sets the video's; an odd width or height loses its last
    column or row, as 4:2:0 video needs even sizes) and finalised by `close`, which a `with` block calls even
    when the run stops on an error or Ctrl-C.
    """

    def __init__(self, path: str | os.PathLike, rate: Fraction):
        self._av = import_av()
        self.path, self.rate, self.frames = Path(path), Fraction(rate), 0
        self.codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
        self._container: Any = None
        self._stream: Any = None

    def write(self, image: np.ndarray) -> None:
        """Append one [H, W, 3] uint8 RGB frame."""
        height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        if height == 0 or width == 0:
            raise VideoError(f"{self.path}: a frame of {image.shape[1]}x{image.shape[0]} pixels is too small to encode")
        if self._container is None:
            self._container = self._av.open(str(self.path), "w")
            self._stream = self._container.add_stream(self.codec, rate=self.rate)
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
        frame.pts = self.frames  # in 1 / rate units: the stream's time base
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finalise the file (nothing is written when no frame came)."""
        if self._container is not None:
            try:
                self._container.mux(self._stream.encode(None))
            finally:
                self._container.close()
                self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class Tracker:
    """ByteTrack ids (Roboflow's `trackers`, on supervision's Detections) for the detections of one video.

    Every detection the detector kept may start or continue a track: both ByteTrack thresholds are the
    detector's. A new track's first detection has id -1 (ByteTrack confirms a track on its second match).
    """

    def __init__(self, rate: float, threshold: float):
        self._tracker = import_tracker()(frame_rate=float(rate), track_activation_threshold=threshold,
                                         high_conf_det_threshold=threshold, minimum_consecutive_frames=1)

    def update(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Track ids [N] int (-1: not yet confirmed) of one frame's boxes [N, 4] xyxy, scores [N], labels [N]."""
        import supervision as sv

        count = len(scores)
        found = sv.Detections(xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                              confidence=np.asarray(scores, dtype=np.float32),
                              class_id=np.asarray(labels, dtype=np.int64), data={"index": np.arange(count)})
        tracked = self._tracker.update(found)  # reorders, so each box's own index comes back with it
        ids = np.full(count, -1, dtype=np.int64)
        if len(tracked):
            ids[np.asarray(tracked.data["index"], dtype=np.int64)] = np.asarray(tracked.tracker_id, dtype=np.int64)
        return ids
