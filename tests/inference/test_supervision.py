"""Detections.to_supervision(): values, dtypes and supervision's own operations on the result."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # supervision warns when OpenCV is absent (it has a numpy fallback)
    import supervision as sv  # the dev extra: a missing one fails the run here instead of skipping the file

from detr.inference.detector import Detections


def found(n: int) -> Detections:
    boxes = torch.tensor([[10.5, 20.25, 50.0, 60.0], [0.0, 0.0, 99.0, 79.0], [30.0, 5.0, 31.0, 6.0]])[:n]
    scores = torch.tensor([0.9, 0.75, 0.5])[:n]
    labels = torch.tensor([3, 1, 3])[:n]
    return Detections(boxes, scores, labels, ["car", "person", "car"][:n], (80, 100), torch.arange(n))


def test_round_trip_values_and_dtypes():
    det = found(3)
    out = det.to_supervision()
    assert isinstance(out, sv.Detections) and len(out) == 3
    assert out.xyxy.dtype == np.float32 and out.xyxy.shape == (3, 4)
    assert out.confidence.dtype == np.float32 and np.issubdtype(out.class_id.dtype, np.integer)
    np.testing.assert_array_equal(out.xyxy, det.boxes.numpy())
    np.testing.assert_array_equal(out.confidence, det.scores.numpy())
    np.testing.assert_array_equal(out.class_id, [3, 1, 3])
    assert out.data["class_name"].tolist() == ["car", "person", "car"]
    assert out.mask is None and out.tracker_id is None
    # supervision's own API works on it: filtering keeps the rows and their names together
    kept = out[out.confidence > 0.6]
    assert len(kept) == 2 and kept.data["class_name"].tolist() == ["car", "person"]
    assert kept.class_id.tolist() == [3, 1]
    np.testing.assert_allclose(out.area, [39.5 * 39.75, 99.0 * 79.0, 1.0])  # supervision computes from xyxy
    cars = out[out.class_id == 3]
    assert cars.xyxy.tolist() == [[10.5, 20.25, 50.0, 60.0], [30.0, 5.0, 31.0, 6.0]]


def test_empty_detections_match_supervisions_empty():
    out = found(0).to_supervision()
    empty = sv.Detections.empty()
    assert len(out) == 0 and out.is_empty()
    assert out.xyxy.shape == empty.xyxy.shape == (0, 4)
    assert (out.xyxy.dtype, out.confidence.dtype, out.class_id.dtype) == (
        empty.xyxy.dtype, empty.confidence.dtype, empty.class_id.dtype)
    assert out.data["class_name"].shape == (0,)
    merged = sv.Detections.merge([out, found(2).to_supervision()])  # supervision accepts ours in its own ops
    assert len(merged) == 2 and merged.data["class_name"].tolist() == ["car", "person"]


def test_missing_supervision_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # `import supervision` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'detr-aligned\[supervision\]'"):
        found(1).to_supervision()


def test_other_dtypes_are_converted():
    det = found(2)
    det.boxes, det.labels = det.boxes.double(), det.labels.int()
    out = det.to_supervision()
    assert out.xyxy.dtype == np.float32 and out.class_id.dtype == np.int64
    np.testing.assert_array_equal(out.class_id, [3, 1])
