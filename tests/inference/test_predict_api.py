"""`detr.Detector`: loading official and our checkpoints, any image type, boxes in original pixels."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.checkpoint import CheckpointError
from detr.data.transforms import preprocess

from ..helpers.predict import (  # noqa: F401  (one_thread: autouse fixture)
    MAX_SIZE,
    SIZE,
    TINY,
    Payload,
    expected_resize,
    one_thread,
    save_official,
    save_ours,
    tiny_model,
    write_images,
)

COCO_SOME = {1: "person", 3: "car", 12: "N/A", 18: "dog", 90: "toothbrush"}  # from the COCO 2017 category list


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def official_file(model, tmp_path_factory):
    return save_official(model, tmp_path_factory.mktemp("w") / "official.pth")


def load(path, **kw):
    return detr.Detector.from_pretrained(path, size=SIZE, max_size=MAX_SIZE, **kw)


def reference_detections(model, image_rgb: np.ndarray, threshold: float):
    """Boxes computed by hand (float64) from the raw model output on the validation input."""
    h, w = image_rgb.shape[:2]
    x = preprocess(torch.from_numpy(image_rgb).permute(2, 0, 1), size=SIZE, max_size=MAX_SIZE)
    assert tuple(x.shape[1:]) == expected_resize(h, w, SIZE, MAX_SIZE)
    with torch.no_grad():
        out = model([x])
    prob = out["pred_logits"][0].double().softmax(-1)[:, :-1].numpy()
    cx, cy, bw, bh = out["pred_boxes"][0].double().numpy().T
    boxes = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
    scores, labels = prob.max(1), prob.argmax(1)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep])]
    return boxes[keep], scores[keep], labels[keep]


def test_official_file_boxes_in_original_pixels(model, official_file, images):
    detector = load(official_file, threshold=0.5, nheads=TINY["nheads"])
    for name, path in images.items():
        rgb = np.asarray(Image.open(path).convert("RGB"))
        found = detector(path)
        boxes, scores, labels = reference_detections(model, rgb, 0.5)
        assert 0 < len(found) == len(scores), name
        assert found.image_size == rgb.shape[:2]
        np.testing.assert_allclose(found.boxes.numpy(), boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(found.scores.numpy(), scores, rtol=1e-5)
        assert found.labels.tolist() == labels.tolist()
        assert found.names == [COCO_SOME.get(int(i), found.names[k]) for k, i in enumerate(labels)]


def test_coco_names_for_official_weights(official_file):
    detector = load(official_file, nheads=TINY["nheads"])
    for label, name in COCO_SOME.items():
        assert detector.label_name(label) == name


def test_our_checkpoint_needs_no_flags_and_names_its_classes(tmp_path, images):
    model = tiny_model(num_classes=3)
    names = ["cat", "dog", "bird"]
    for suffix in (".pth", ".safetensors"):
        detector = load(save_ours(model, tmp_path / f"ours{suffix}", names, num_classes=3), threshold=0.3)
        found = detector(images["rgb.png"])
        _, scores, labels = reference_detections(model, np.asarray(Image.open(images["rgb.png"])), 0.3)
        assert len(found) == len(scores) > 0
        assert found.names == [names[i] for i in labels]


def test_every_input_type_gives_the_same_detections(official_file, images):
    detector = load(official_file, threshold=0.0, nheads=TINY["nheads"])
    path = images["rgb.png"]
    rgb = np.asarray(Image.open(path))
    chw = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
    reference = detector(path)
    same = [str(path), Image.open(path), rgb, chw, chw[None]]
    for i, image in enumerate(same):
        found = detector(image)
        found = found[0] if isinstance(found, list) else found
        assert torch.equal(found.boxes, reference.boxes), i
    # float 0-1 pixels skip uint8 rounding after the resize: close, not identical
    found = detector(chw.float() / 255)
    assert torch.allclose(found.boxes, reference.boxes, atol=0.5)


def test_grey_and_rgba_are_read_as_rgb(official_file, images):
    detector = load(official_file, threshold=0.0, nheads=TINY["nheads"])
    for name in ("grey.png", "alpha.png"):
        rgb = np.asarray(Image.open(images[name]).convert("RGB"))
        assert torch.equal(detector(images[name]).boxes, detector(rgb).boxes)
    grey = np.asarray(Image.open(images["grey.png"]))
    assert torch.equal(detector(grey).boxes, detector(images["grey.png"]).boxes)


def test_list_in_list_out_and_batches(official_file, images):
    detector = load(official_file, threshold=0.0, nheads=TINY["nheads"])  # 0: every query, paired one to one
    paths = list(images.values())
    one_by_one = [detector(p) for p in paths]
    listed = detector(paths)
    assert isinstance(listed, list) and len(listed) == len(paths)
    for a, b in zip(listed, one_by_one):
        assert torch.equal(a.boxes, b.boxes)
    # Padded together, the smaller images get zeros at the bottom/right: the backbone's deeper layers
    # see them (BatchNorm shifts and biases make them non-zero) and the 1/32 mask rounds, so the numbers
    # move. Measured on these four images (1 thread): boxes <= 1.0% of the long side (0.65 px), scores
    # <= 0.014, the same labels. Allowed: 2% and 0.03. Boxes scaled to the padded size instead of the
    # image's own would be off by >= 10% of it.
    for batch_size in (2, 4):
        batched = detector(paths, batch_size=batch_size)
        assert len(batched) == len(paths)
        for path, b, a in zip(paths, batched, one_by_one):
            where = f"{path.name}, batch_size {batch_size}"
            assert b.image_size == a.image_size, where
            assert len(b) == len(a) == TINY["num_queries"], where
            b_order, a_order = b.queries.argsort(), a.queries.argsort()  # the same query on both sides
            assert b.labels[b_order].tolist() == a.labels[a_order].tolist(), where
            torch.testing.assert_close(b.boxes[b_order], a.boxes[a_order], rtol=0, atol=0.02 * max(a.image_size),
                                       msg=lambda m, where=where: f"{where}: boxes: {m}")
            torch.testing.assert_close(b.scores[b_order], a.scores[a_order], rtol=0, atol=0.03,
                                       msg=lambda m, where=where: f"{where}: scores: {m}")


def test_threshold_filters_and_is_checked(official_file, images):
    detector = load(official_file, threshold=0.0, nheads=TINY["nheads"])
    everything = detector(images["rgb.png"])
    assert len(everything) == TINY["num_queries"]
    assert everything.scores.tolist() == sorted(everything.scores.tolist(), reverse=True)
    cut = float(everything.scores[3])
    assert len(detector(images["rgb.png"], threshold=cut)) == int((everything.scores >= cut).sum())
    for bad in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="threshold must be a number in \\[0, 1\\]"):
            load(official_file, threshold=bad, nheads=TINY["nheads"])
        with pytest.raises(ValueError, match="threshold"):
            detector(images["rgb.png"], threshold=bad)


def test_coco_results_entries(official_file, images):
    found = load(official_file, threshold=0.5, nheads=TINY["nheads"])(images["photo.jpg"])
    entries = found.to_coco(image_id=7)
    assert len(entries) == len(found)
    x0, y0, x1, y1 = found.boxes[0].tolist()
    assert entries[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)
    assert entries[0]["image_id"] == 7 and entries[0]["category_id"] == int(found.labels[0])


@pytest.mark.parametrize("bad", [np.zeros((4, 5, 2), np.uint8), np.zeros((2, 3, 4, 5)), torch.rand(5, 8, 8),
                                 torch.randn(3, 8, 8) * 3, torch.zeros(3, 0, 8), [1, 2, 3]],
                         ids=["two-channels", "4d-array", "five-channels", "normalised", "empty", "list-of-ints"])
def test_bad_images_are_explained(official_file, bad):
    detector = load(official_file, nheads=TINY["nheads"])
    with pytest.raises((ValueError, TypeError), match="image"):
        detector(bad)


def test_missing_or_undecodable_image_file_names_the_file(official_file, tmp_path):
    detector = load(official_file, nheads=TINY["nheads"])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (text, tmp_path / "missing.jpg"):
        with pytest.raises(ValueError, match=path.name):
            detector(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_without_gpu_is_a_clear_error(official_file):
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        load(official_file, device="cuda", nheads=TINY["nheads"])


def bad_checkpoints(tmp_path, model):
    good = save_official(model, tmp_path / "good.pth")
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("hello, I am not a checkpoint")
    (tmp_path / "list.pth").write_bytes(pickle.dumps([1, 2, 3]))
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "classifier.pth")
    mismatched = tiny_model(num_classes=91).state_dict()
    mismatched["class_embed.weight"] = mismatched["class_embed.weight"][:5]  # head and bias disagree
    torch.save({"model": mismatched}, tmp_path / "mismatch.pth")
    save_ours(model, tmp_path / "config_disagrees.pth", ["a", "b"], num_classes=2)
    return {"truncated.pth": "truncated or corrupt", "text.pth": "not a readable PyTorch checkpoint",
            "list.pth": "(refused|not a DETR checkpoint|not a readable PyTorch checkpoint)", "classifier.pth": "not DETR weights",
            "mismatch.pth": "shape mismatch", "config_disagrees.pth": "shape mismatch"}


def test_bad_checkpoints_are_refused(tmp_path, model):
    for name, reason in bad_checkpoints(tmp_path, model).items():
        with pytest.raises(CheckpointError, match=f"{name}.*{reason}"):
            load(tmp_path / name, nheads=TINY["nheads"])


def test_malicious_checkpoint_never_runs(tmp_path, model):
    marker = tmp_path / "pwned"
    torch.save({"model": model.state_dict(), "args": Payload(marker)}, tmp_path / "evil.pth")
    (tmp_path / "raw.pth").write_bytes(pickle.dumps(Payload(marker)))
    for name in ("evil.pth", "raw.pth"):
        with pytest.raises(CheckpointError, match=name):
            detr.Detector.from_pretrained(tmp_path / name)
    assert not marker.exists()


def test_official_training_checkpoint_args_give_heads_and_dilation(model, official_file, images, tmp_path):
    """Official training checkpoints keep "args" (a Namespace) and DDP "module." names: no flags needed."""
    path = save_official(model, tmp_path / "checkpoint.pth", args={"nheads": 2, "dilation": False, "lr": 1e-4})
    from_args = load(path, threshold=0.0)
    from_flags = load(official_file, threshold=0.0, nheads=TINY["nheads"])
    assert torch.equal(from_args(images["rgb.png"]).boxes, from_flags(images["rgb.png"]).boxes)
    wrong_heads = load(official_file, threshold=0.0)  # 8 heads: the shapes fit, the function does not
    assert not torch.allclose(wrong_heads(images["rgb.png"]).scores, from_flags(images["rgb.png"]).scores)


def test_bf16_amp_runs_the_model_in_bf16_and_moves_boxes_little(official_file, images):
    fp32 = load(official_file, threshold=0.0, nheads=TINY["nheads"])
    bf16 = load(official_file, threshold=0.0, nheads=TINY["nheads"], amp="bf16")
    seen = []
    hook = bf16.model.class_embed.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    low, ref = bf16(images["photo.jpg"]), fp32(images["photo.jpg"])
    hook.remove()
    assert seen == [torch.bfloat16]
    assert low.boxes.dtype == low.scores.dtype == torch.float32
    # the same queries, compared query by query: bf16 keeps ~3 significant digits
    order = ref.queries.argsort()
    low_order = low.queries.argsort()
    h, w = ref.image_size
    shift = (low.boxes[low_order] - ref.boxes[order]).abs().max().item()
    assert shift <= 0.02 * max(h, w)
    assert (low.scores[low_order] - ref.scores[order]).abs().max() <= 0.02


def test_amp_is_checked(official_file):
    with pytest.raises(ValueError, match="amp must be one of none, bf16, fp16, got 'int8'"):
        load(official_file, nheads=TINY["nheads"], amp="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="amp fp16 needs a CUDA device"):
            load(official_file, nheads=TINY["nheads"], amp="fp16")
