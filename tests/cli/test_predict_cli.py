"""`detr predict` and `detr explain`: files in, annotated PNGs + COCO-results JSON out, bad input explained."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detr.checkpoint import CheckpointError
from detr.cli.explain import main as explain_command
from detr.cli.predict import main as predict_command

from ..helpers.predict import (  # noqa: F401  (autouse fixture)
    MAX_SIZE,
    SIZE,
    TINY,
    Payload,
    one_thread,
    save_official,
    save_ours,
    tiny_model,
    write_images,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest on shared cores
FAST = ["--val_scale", str(SIZE), "--max_size", str(MAX_SIZE)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    return save_official(model, tmp_path_factory.mktemp("w") / "official.pth")


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images")


def predict(weights, *argv, threshold="0.5"):
    return predict_command([*map(str, argv), "--weights", str(weights), "--nheads", str(TINY["nheads"]),
                            "--threshold", threshold, *FAST])


def test_folder_of_images_gives_pictures_and_coco_json(model, weights, images, tmp_path):
    out = tmp_path / "out"
    assert predict(weights, images["rgb.png"].parent, "--output_dir", out) == 0
    results = json.loads((out / "detections.json").read_text())
    listed = json.loads((out / "images.json").read_text())
    assert sorted(i["file_name"] for i in listed) == sorted(str(p) for p in images.values())
    for entry in listed:
        original = Image.open(entry["file_name"])
        picture = Image.open(out / entry["picture"])
        picture.verify()  # a valid PNG
        assert Image.open(out / entry["picture"]).format == "PNG"
        assert picture.size == original.size == (entry["width"], entry["height"])
    # independent count: scores from the raw model on the validation input, file by file
    from detr.data.transforms import preprocess

    expected = 0
    for path in images.values():
        x = preprocess(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1), SIZE, MAX_SIZE)
        with torch.no_grad():
            prob = model([x])["pred_logits"][0].softmax(-1)[:, :-1]
        expected += int((prob.max(-1).values >= 0.5).sum())
    assert len(results) == expected > 0
    ids = {i["id"] for i in listed}
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert r["image_id"] in ids and r["score"] >= 0.5 and len(r["bbox"]) == 4


def test_picture_shows_the_boxes(weights, images, tmp_path):
    out = tmp_path / "out"
    predict(weights, images["rgb.png"], "--output_dir", out)
    drawn = np.asarray(Image.open(out / "rgb.png").convert("RGB")).astype(int)
    original = np.asarray(Image.open(images["rgb.png"]).convert("RGB")).astype(int)
    box = json.loads((out / "detections.json").read_text())[0]["bbox"]
    x, y = int(box[0]), int(box[1] + box[3] / 2)  # left edge of the best box, half-way down
    assert np.abs(drawn[y, x] - original[y, x]).sum() > 0
    assert (np.abs(drawn - original).sum(-1) > 0).mean() < 0.9  # most of the image is untouched


def test_bad_files_among_many_are_reported_and_skipped(weights, images, tmp_path, capsys):
    folder = images["rgb.png"].parent
    (folder / "notes.png").write_text("not an image")
    (folder / "cut.jpg").write_bytes(images["photo.jpg"].read_bytes()[:200])
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    assert predict(weights, folder, "--output_dir", out) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "notes.png" in err and "cut.jpg" in err
    listed = json.loads((out / "images.json").read_text())
    assert sorted(os.path.basename(i["file_name"]) for i in listed) == sorted(images)
    assert all((out / i["picture"]).is_file() for i in listed)


def test_same_stem_twice_keeps_both_pictures(weights, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images["rgb.png"], other / "rgb.png")
    out = tmp_path / "out"
    predict(weights, images["rgb.png"], other / "rgb.png", "--output_dir", out)
    assert sorted(p.name for p in out.glob("*.png")) == ["rgb.png", "rgb_2.png"]


def test_our_checkpoint_names_classes_in_json_ids(tmp_path, images):
    model = tiny_model(num_classes=3)
    path = save_ours(model, tmp_path / "ours.pth", ["cat", "dog", "bird"], num_classes=3)
    numbered = tmp_path / "coco"
    numbered.mkdir()
    shutil.copy(images["rgb.png"], numbered / "000000000042.png")
    out = tmp_path / "out"
    assert predict_command([str(numbered), "--weights", str(path), "--threshold", "0.3", "--output_dir", str(out),
                            *FAST]) == 0
    results = json.loads((out / "detections.json").read_text())
    assert results and {r["image_id"] for r in results} == {42}
    assert {r["category_id"] for r in results} <= {0, 1, 2}


@pytest.mark.parametrize("value", ["-0.1", "1.5", "abc"])
def test_threshold_outside_0_1_is_refused(weights, images, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict(weights, images["rgb.png"], threshold=value)
    assert exit_info.value.code == 2
    assert "--threshold" in capsys.readouterr().err


def test_output_folder_problems(weights, images, tmp_path):
    assert predict(weights, images["rgb.png"], "--output_dir", tmp_path / "new" / "out") == 0  # made, as mkdir -p
    assert (tmp_path / "new" / "out" / "detections.json").is_file()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        predict(weights, images["rgb.png"], "--output_dir", a_file)
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            predict(weights, images["rgb.png"], "--output_dir", locked)


def test_missing_input_and_empty_folder(weights, tmp_path):
    with pytest.raises(ValueError, match="nothing.jpg: no such file"):
        predict(weights, tmp_path / "nothing.jpg", "--output_dir", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found"):
        predict(weights, tmp_path / "empty", "--output_dir", tmp_path / "o")


def test_bad_checkpoints_are_refused_and_never_run(model, images, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": model.state_dict(), "x": Payload(marker)}, tmp_path / "evil.pth")
    good = save_official(model, tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 3])
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(1).bytes(2048))
    save_official(tiny_model(backbone="resnet34"), tmp_path / "r34.pth")
    cases = {"evil.pth": "refused", "truncated.pth": "truncated or corrupt", "random.pth": "(not a readable|refused)",
             "r34.pth": "holds resnet34 weights, but resnet50 was asked for"}
    for name, reason in cases.items():
        extra = ["--model", "detr_r50"] if name == "r34.pth" else []
        with pytest.raises(CheckpointError, match=f"{name}.*{reason}"):
            predict(tmp_path / name, images["rgb.png"], "--output_dir", tmp_path / "out", *extra)
    assert not marker.exists()


def test_attention_pictures(weights, images, tmp_path):
    out = tmp_path / "out"
    predict(weights, images["photo.jpg"], "--output_dir", out, "--attention", "--pixel", "10,20")
    size = Image.open(images["photo.jpg"]).size
    n = len(json.loads((out / "detections.json").read_text()))
    pictures = sorted((out / "photo_attention").iterdir())
    assert len(pictures) == n + 1 and pictures[0].name == "encoder_10_20.png"
    for p in pictures:
        with Image.open(p) as img:
            assert img.format == "PNG" and img.size == size


def test_explain_command_and_bad_pixel(weights, images, tmp_path):
    argv = [str(images["rgb.png"]), "--weights", str(weights), "--nheads", "2", "--threshold", "0.5", *FAST]
    assert explain_command([*argv, "--output_dir", str(tmp_path / "a")]) == 0
    assert any(p.name.startswith("object_00_") for p in (tmp_path / "a").iterdir())
    with pytest.raises(ValueError, match="outside the image of 90x60"):
        explain_command([*argv, "--output_dir", str(tmp_path / "b"), "--pixel", "90,10"])
    with pytest.raises(ValueError, match="two integers as x,y"):
        explain_command([*argv, "--output_dir", str(tmp_path / "c"), "--pixel", "3"])


def test_command_line_end_to_end(weights, images, model, tmp_path):
    """The real `python -m detr predict`: results written, and a malicious checkpoint refused with exit 2."""
    out = tmp_path / "out"
    base = [sys.executable, "-m", "detr", "predict", str(images["rgb.png"].parent), "--output_dir", str(out),
            "--nheads", "2", *FAST]
    done = subprocess.run([*base, "--weights", str(weights)], capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr
    assert len(json.loads((out / "images.json").read_text())) == len(images)
    marker = tmp_path / "pwned"
    torch.save({"model": model.state_dict(), "x": Payload(marker)}, tmp_path / "evil.pth")
    done = subprocess.run([*base, "--weights", str(tmp_path / "evil.pth")], capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert done.returncode == 2 and "evil.pth" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


def test_amp_bf16_detects_with_the_same_outputs_layout(weights, images, tmp_path, monkeypatch):
    from detr.inference.detector import Detector

    used = []
    real_detect = Detector.detect
    monkeypatch.setattr(Detector, "detect", lambda self, *a: (used.append(self.amp), real_detect(self, *a))[1])
    out = tmp_path / "out"
    assert predict(weights, images["rgb.png"], "--output_dir", out, "--amp", "bf16", threshold="0.0") == 0
    assert used == ["bf16"]
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == TINY["num_queries"] and all(len(r["bbox"]) == 4 for r in results)
    with pytest.raises(ValueError, match="amp must be one of none, bf16, fp16, got 'fp8'"):
        predict(weights, images["rgb.png"], "--output_dir", out, "--amp", "fp8")
