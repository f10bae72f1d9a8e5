"""Fuzz: random and mutated annotation JSON and image files through scan + dataset.

Every case must end in a clean dataset whose items satisfy the target contract, or a
DatasetError; any other exception, or a run longer than the alarm, fails the test.
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from detr.data import DatasetError, build_dataset, make_transforms

from ..helpers.data import encode

IMAGE_KINDS = ("png", "png", "jpeg", "jpeg", "gray", "rgba", "deep", "truncated", "garbage", "empty", "missing")

json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
             | st.text(max_size=6))
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                        max_leaves=8)
number = st.integers(-50, 80) | st.floats(-1e6, 1e6) | st.floats(allow_nan=True, allow_infinity=True)


def _mostly(draw, good, bad, p_bad: float = 0.15):
    """Draw from `good`, or from `bad` with probability about `p_bad`."""
    return draw(bad if _chance(draw, p_bad) else good)


def _chance(draw, p: float) -> bool:
    """True with probability about p (hypothesis favours small integers, so small means False)."""
    return draw(st.integers(0, 99)) >= round(100 * (1 - p))


@st.composite
def annotation(draw, num_images: int):
    ann = {
        "id": _mostly(draw, st.integers(0, 5), json_leaf),
        "image_id": _mostly(draw, st.integers(0, num_images + 1), json_leaf),
        "category_id": _mostly(draw, st.integers(-1, 6), st.just(10**20) | json_leaf, 0.1),
        "bbox": _mostly(draw, st.lists(number, min_size=4, max_size=4), st.lists(number, max_size=6) | json_any),
    }
    for key, strategy in (("iscrowd", st.sampled_from([0, 1, True, 2, "1"])), ("area", number | json_leaf)):
        if draw(st.booleans()):
            ann[key] = draw(strategy)
    if _chance(draw, 0.1):
        ann.pop(draw(st.sampled_from(sorted(ann))), None)
    return ann


def _image_bytes(kind: str, w: int, h: int, seed: int) -> bytes | None:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if kind == "png":
        return encode(rgb, "PNG")
    if kind in ("jpeg", "truncated"):
        data = encode(rgb, "JPEG")
        return data if kind == "jpeg" else data[: len(data) // 2]
    if kind == "gray":
        return encode(rgb.convert("L"), "PNG")
    if kind == "rgba":
        return encode(rgb.convert("RGBA"), "PNG")
    if kind == "deep":
        return encode(Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)), "PNG")
    if kind == "garbage":
        return rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    return b"" if kind == "empty" else None


@st.composite
def dataset_files(draw):
    """{file name: bytes or None (missing)}, the annotation file's bytes, and num_classes."""
    n = draw(st.integers(0, 5))
    files: dict[str, bytes | None] = {}
    images = []
    for i in range(n):
        w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        name = f"im{i}.{draw(st.sampled_from(['png', 'jpg']))}"
        files[name] = _image_bytes(draw(st.sampled_from(IMAGE_KINDS)), w, h, seed=i)
        images.append({"id": _mostly(draw, st.just(i + 1), st.integers(1, 3) | json_leaf),
                       "file_name": name, "width": _mostly(draw, st.just(w), st.integers(-1, 50) | json_leaf),
                       "height": h})
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    data = {"images": images, "annotations": draw(st.lists(annotation(n), max_size=10)),
            "categories": _mostly(draw, st.just(categories), json_any | st.just([{"id": 3}, "x"]), 0.2)}
    if _chance(draw, 0.1):  # a whole section broken
        data[draw(st.sampled_from(sorted(data)))] = draw(json_any)
    text = json.dumps(data).encode()
    cut = draw(st.sampled_from(["truncate", "flip", "garbage"])) if _chance(draw, 0.2) else "keep"
    if cut == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif cut == "flip" and text:
        pos = draw(st.integers(0, len(text) - 1))
        text = text[:pos] + bytes([text[pos] ^ draw(st.integers(1, 255))]) + text[pos + 1:]
    elif cut == "garbage":
        text = draw(st.binary(max_size=40))
    return files, text, draw(st.none() | st.integers(-1, 6)), draw(st.booleans())


@contextlib.contextmanager
def _alarm(seconds: int):
    def fail(*_):
        raise TimeoutError(f"scan + dataset took longer than {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _check_item(image: torch.Tensor, target: dict, num_classes: int) -> None:
    assert image.dim() == 3 and image.shape[0] == 3 and image.dtype == torch.float32
    assert torch.isfinite(image).all()
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.shape == (len(labels), 4) and labels.dtype == torch.int64
    assert torch.isfinite(boxes).all() and (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2:] > 0).all()
    assert ((labels >= 0) & (labels < num_classes)).all()
    assert target["size"].tolist() == list(image.shape[1:])
    assert isinstance(target["image_id"], int)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset_files())
def test_fuzz_scan_and_load(case):
    files, text, num_classes, train = case
    with tempfile.TemporaryDirectory() as tmp, _alarm(30), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(tmp)
        for name, data in files.items():
            if data is not None:
                (root / name).write_bytes(data)
        (root / "ann.json").write_bytes(text)
        tf = make_transforms(train, scales=[24, 32], max_size=64, crop=([32], 8, 24), val_scale=32)
        try:
            ds = build_dataset(root, root / "ann.json", train=train, transforms=tf, num_classes=num_classes)
        except DatasetError as e:
            assert str(e)  # a message for people
            event("refused: " + str(e).split(":")[1].strip()[:30] if ":" in str(e) else "refused")
            return
        event(f"usable dataset of {len(ds)} images")
        assert len(ds) >= 1
        for i in range(len(ds)):
            _check_item(*ds[i], ds.num_classes)
        if not train:
            ds.coco.getAnnIds()
