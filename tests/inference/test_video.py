"""Video: a clip written here (coloured shapes on known linear paths) through `predict_video`, `Detector.video`
and `detr predict`, with a colour-threshold detector written here, so the pipeline is checked, not a model."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from detr.cli import main as detr_main
from detr.inference.detector import Detections, Detector
from detr.inference.video import MissingPackageError, VideoError, is_video_source
from detr.inference.video_files import predict_video
from detr.inference.visualize import draw_detections, draw_tracked

from ..helpers.predict import MAX_SIZE, SIZE, one_thread, save_ours, tiny_model  # noqa: F401  (autouse fixture)

FRAMES, FPS, SIDE = 24, 10, 128
# label -> (RGB, start (x0, y0), velocity (dx, dy) per frame, size (w, h)); even numbers keep the edges on the 4:2:0
# chroma grid, and the paths never cross
SHAPES = {1: ((255, 0, 0), (6, 6), (2, 0), (20, 20)),
          2: ((0, 255, 0), (100, 40), (-2, 2), (20, 16)),
          3: ((0, 0, 255), (6, 104), (4, 0), (18, 18))}
NAMES = ["background", "red", "green", "blue"]
TOLERANCE = 2.5  # pixels: compression blurs the edges of the decoded shapes


def known_box(label: int, frame: int) -> list[float]:
    """Where shape `label` is at `frame`: [x0, y0, x1, y1] pixels (x1, y1 excluded)."""
    _, (x, y), (dx, dy), (w, h) = SHAPES[label]
    return [x + dx * frame, y + dy * frame, x + dx * frame + w, y + dy * frame + h]


def write_clip(path: Path, frames: int = FRAMES, options: dict | None = None, start: int = 0) -> Path:
    """The test's own writer: MPEG-4 at a high bit rate, `frames` frames of SIDE x SIDE at FPS, the first at
    `start` / FPS seconds."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = SIDE
        stream.pix_fmt, stream.bit_rate = "yuv420p", 4_000_000
        for i in range(frames):
            image = np.zeros((SIDE, SIDE, 3), np.uint8)
            for label, (rgb, *_) in SHAPES.items():
                x0, y0, x1, y1 = known_box(label, i)
                image[y0:y1, x0:x1] = rgb
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = start + i  # in 1 / FPS
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def read_back(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frames, frames per second, (width, height)) of a video, decoded here with PyAV; errors end the count."""
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate, size = float(stream.average_rate), (stream.width, stream.height)
        try:
            for _ in container.decode(stream):
                count += 1
        except av.FFmpegError:
            pass
    return count, rate, size


def colour_detect(images: list[torch.Tensor], threshold: float, jitter: np.random.Generator | None = None):
    """A detector written here: each shape's box is the bounds of the pixels of its colour (with `jitter`: +-1 pixel
    of noise and a shuffled order)."""
    found = []
    for image in images:
        pixels = image.permute(1, 2, 0).numpy().astype(int)  # [H, W, 3]
        boxes, labels = [], []
        for label, (rgb, *_) in SHAPES.items():
            c = rgb.index(255)
            mask = (pixels[..., c] > 128) & (np.delete(pixels, c, axis=2) < 100).all(axis=2)
            ys, xs = np.nonzero(mask)
            if len(xs):
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
                boxes.append(box + (jitter.uniform(-1, 1, 4) if jitter is not None else 0))
                labels.append(label)
        n = len(labels)
        if jitter is not None:  # the order changes from frame to frame, as scores would order a model's boxes
            order = jitter.permutation(n)
            boxes, labels = [boxes[i] for i in order], [labels[i] for i in order]
        found.append(Detections(torch.tensor(np.array(boxes).reshape(n, 4), dtype=torch.float32),
                                torch.full((n,), 0.9), torch.tensor(labels, dtype=torch.int64),
                                [NAMES[i] for i in labels], (int(image.shape[1]), int(image.shape[2])),
                                torch.arange(n)))
    return found


@pytest.fixture
def detector(monkeypatch) -> Detector:
    """A Detector whose detection step is `colour_detect` with seeded noise (the model is unused)."""
    found = Detector(torch.nn.Identity(), class_names=NAMES, threshold=0.5)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(found, "detect", lambda images, threshold: colour_detect(images, threshold, rng))
    return found


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "shapes.mp4")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_paths(lines: list[dict]) -> None:
    """Every line has the three shapes, each box within TOLERANCE of its known path at that frame."""
    for line in lines:
        assert sorted(line["labels"]) == [1, 2, 3], line
        for box, label, name in zip(line["boxes"], line["labels"], line["names"]):
            assert name == NAMES[label]
            assert np.abs(np.array(box) - known_box(label, line["frame"])).max() <= TOLERANCE, (line["frame"], label)


def test_one_line_per_frame_same_frames_boxes_on_paths(detector, clip, tmp_path):
    run = predict_video(detector, clip, tmp_path / "out")
    lines = read_lines(tmp_path / "out" / "frames.jsonl")
    assert [x["frame"] for x in lines] == list(range(FRAMES))
    assert [x["time"] for x in lines] == pytest.approx([i / FPS for i in range(FRAMES)], abs=1e-6)
    assert "track_ids" not in lines[0]
    check_paths(lines)
    assert read_back(tmp_path / "out" / "annotated.mp4") == (FRAMES, FPS, (SIDE, SIDE))
    with av.open(str(tmp_path / "out" / "annotated.mp4")) as drawn, av.open(str(clip)) as plain:
        pairs = zip(drawn.decode(video=0), plain.decode(video=0))
        for i, (out, source) in enumerate(pairs):  # outlines drawn on each box's edges, the far background kept
            diff = np.abs(out.to_ndarray(format="rgb24").astype(int) - source.to_ndarray(format="rgb24")).max(axis=2)
            for label in SHAPES:
                x0, y0, x1, y1 = known_box(label, i)
                top, left = diff[y0 - 1:y0 + 3, (x0 + x1) // 2], diff[(y0 + y1) // 2, x0 - 1:x0 + 3]  # +-1 px noise
                assert top.max() > 50 and left.max() > 50, (i, label)
            assert diff[30:38, 0:4].max() < 30, i
    assert (run.frames, run.detections, run.ended_early) == (FRAMES, 3 * FRAMES, "")


def test_track_gives_one_stable_id_per_shape(detector, clip, tmp_path):
    predict_video(detector, clip, tmp_path, track=True)
    lines = read_lines(tmp_path / "frames.jsonl")
    ids: dict[int, set[int]] = {label: set() for label in SHAPES}
    for line in lines:
        assert len(line["track_ids"]) == len(line["labels"])
        for label, track in zip(line["labels"], line["track_ids"]):
            if line["frame"] > 0:  # ByteTrack confirms a track at its second sighting (-1 before)
                ids[label].add(track)
    assert all(len(found) == 1 and min(found) >= 0 for found in ids.values()), ids
    assert len({min(found) for found in ids.values()}) == len(SHAPES), ids  # distinct between shapes
    assert read_back(tmp_path / "annotated.mp4")[0] == FRAMES


def test_detector_video_in_python(detector, tmp_path):
    clip = write_clip(tmp_path / "late.mkv", start=15)  # a stream's clock starts anywhere: times count from 0
    frames = list(detector.video(clip, stride=3, track=True))
    assert [f.index for f in frames] == list(range(0, FRAMES, 3))
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(0, FRAMES, 3)], abs=1e-6)
    assert frames[0].image.shape == (SIDE, SIDE, 3) and frames[0].image.dtype == np.uint8
    assert all(f.track_ids is not None and len(f.track_ids) == 3 for f in frames)


def test_stride_halves_the_detected_frames(detector, clip, tmp_path):
    calls = []
    detect = detector.detect
    detector.detect = lambda images, threshold: calls.append(1) or detect(images, threshold)
    run = predict_video(detector, clip, tmp_path, stride=2)
    lines = read_lines(tmp_path / "frames.jsonl")
    assert [x["frame"] for x in lines] == list(range(0, FRAMES, 2)) and len(calls) == FRAMES // 2
    assert [x["time"] for x in lines] == pytest.approx([i / FPS for i in range(0, FRAMES, 2)], abs=1e-6)
    check_paths(lines)
    # the kept frames at half the rate: the same duration
    assert read_back(tmp_path / "annotated.mp4") == (FRAMES // 2, FPS / 2, (SIDE, SIDE)) and run.frames == 12


@pytest.mark.parametrize("name, options", [("cut.mkv", None), ("cut.mp4", {"movflags": "faststart"})])
def test_truncated_video_ends_cleanly_with_a_warning(detector, tmp_path, caplog, name, options):
    whole = write_clip(tmp_path / f"whole{Path(name).suffix}", options=options)
    data = whole.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) * 6 // 10])
    decodable = read_back(cut)[0]
    assert 0 < decodable < FRAMES
    with caplog.at_level(logging.WARNING, logger="detr.inference.video"):
        run = predict_video(detector, cut, tmp_path / "out")
    lines = read_lines(tmp_path / "out" / "frames.jsonl")  # every line complete JSON
    assert [x["frame"] for x in lines] == list(range(decodable))
    check_paths(lines[:-1])  # the last decoded frame may be partly damaged
    assert read_back(tmp_path / "out" / "annotated.mp4")[0] == decodable  # finalised, readable
    assert run.ended_early and f"after frame {decodable - 1}" in caplog.text and str(cut) in caplog.text


class DroppingStream:
    """A container whose decoding fails after `frames` frames, as a network stream that drops."""

    def __init__(self, container, frames: int):
        self._container, self._frames = container, frames

    def __getattr__(self, name):
        return getattr(self._container, name)

    def decode(self, *args):
        for i, frame in enumerate(self._container.decode(*args)):
            if i == self._frames:
                raise av.FFmpegError(104, "Connection reset by peer")
            yield frame


def test_dropped_stream_ends_cleanly(detector, clip, tmp_path, monkeypatch, caplog):
    from detr.inference import video

    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda av_module, source: DroppingStream(real_open(av_module, source), 10))
    with caplog.at_level(logging.WARNING, logger="detr.inference.video"):
        run = predict_video(detector, clip, tmp_path, track=True)
    assert [x["frame"] for x in read_lines(tmp_path / "frames.jsonl")] == list(range(10))
    assert read_back(tmp_path / "annotated.mp4")[0] == 10 and run.frames == 10
    assert "after frame 9" in caplog.text and "Connection reset by peer" in caplog.text


def test_interrupted_run_keeps_what_was_written(detector, clip, tmp_path):
    def stop_at_seven(frame):
        if frame.index == 6:
            raise KeyboardInterrupt  # Ctrl-C on a webcam run

    with pytest.raises(KeyboardInterrupt):
        predict_video(detector, clip, tmp_path, on_frame=stop_at_seven)
    assert [x["frame"] for x in read_lines(tmp_path / "frames.jsonl")] == list(range(7))
    assert read_back(tmp_path / "annotated.mp4")[0] == 7  # finalised, readable


def test_track_ids_are_drawn(clip):
    with av.open(str(clip)) as container:
        image = Image.fromarray(next(container.decode(video=0)).to_ndarray(format="rgb24"))
    found = colour_detect([torch.from_numpy(np.array(image)).permute(2, 0, 1)], 0.5)[0]
    plain = np.asarray(draw_detections(image, found))
    assert np.array_equal(np.asarray(draw_tracked(image, found, [-1, -1, -1])), plain)  # unconfirmed: no id
    assert not np.array_equal(np.asarray(draw_tracked(image, found, [4, 5, 6])), plain)
    with pytest.raises(ValueError, match="2 track ids for 3 detections"):
        draw_tracked(image, found, [1, 2])


def test_unreadable_video_is_a_clear_error(detector, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="broken.mp4: cannot open"):
        detector.video(broken)
    with pytest.raises(VideoError, match="no such video file"):
        detector.video(tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match="stride"):
        detector.video(broken, stride=0)


def test_missing_decoder_or_tracker_names_the_extra(detector, clip, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trackers", None)  # None in sys.modules: import raises ImportError
    with pytest.raises(MissingPackageError, match=r"detr-aligned\[track\]"):
        detector.video(clip, track=True)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingPackageError, match=r"detr-aligned\[video\]"):
        detector.video(clip)
    assert detr_main(["predict", str(clip), "--weights", "unused.pth"]) == 2
    assert "detr-aligned[video]" in capsys.readouterr().err


@pytest.mark.parametrize("text, video", [("a.mp4", True), ("B.MKV", True), ("clip.webm", True), ("0", True),
                                         ("rtsp://cam/1", True), ("http://host/live", True), ("a.jpg", False),
                                         ("anim.gif", False), ("folder", False)])
def test_video_inputs_are_told_from_images(text, video):
    assert is_video_source(text) == video


def test_cli_writes_the_files(tmp_path, capsys):
    ckpt = save_ours(tiny_model(num_classes=4), tmp_path / "tiny.pth", NAMES, num_classes=4)
    clip = write_clip(tmp_path / "short.mp4", frames=6)
    code = detr_main(["predict", str(clip), "--weights", str(ckpt), "--output_dir", str(tmp_path / "out"),
                      "--val_scale", str(SIZE), "--max_size", str(MAX_SIZE), "--threshold", "0.3", "--track",
                      "--stride", "2"])
    assert code == 0, capsys.readouterr().err
    lines = read_lines(tmp_path / "out" / "frames.jsonl")
    assert [x["frame"] for x in lines] == [0, 2, 4] and all("track_ids" in x for x in lines)
    assert read_back(tmp_path / "out" / "annotated.mp4")[0] == 3
    assert "3 frame(s)" in capsys.readouterr().out
