"""`detr predict` for large jobs: batches against the raw model one image at a time, a SIGKILLed run resumed to the
files of an uninterrupted one, two torchrun processes against one, and when pictures are drawn."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detr.cli.predict import main as predict_command
from detr.data.transforms import preprocess
from detr.inference import batch
from detr.inference.batch import SLEEP_ENV, plan_batches, plan_items
from detr.inference.detector import Detector

from ..helpers.predict import MAX_SIZE, SIZE, TINY, one_thread, save_official, tiny_model  # noqa: F401

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
FAST = ["--val_scale", str(SIZE), "--max_size", str(MAX_SIZE), "--nheads", str(TINY["nheads"])]
KILL_SEED_ENV = "DETR_TEST_KILL_SEED"  # the seed of the kill point (default 0)
# (height, width): portrait and landscape mixed, so that batches must be grouped to pad little
SHAPES = [(60, 90), (80, 50), (45, 70), (64, 64), (90, 40), (50, 75), (72, 48), (44, 90), (66, 66), (36, 80),
          (85, 55), (58, 87)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    return save_official(model, tmp_path_factory.mktemp("w") / "official.pth")


def write_folder(folder: Path, shapes: list[tuple[int, int]] = SHAPES) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (h, w) in enumerate(shapes):
        paths.append(folder / f"img_{n:02d}.{'jpg' if n % 3 == 0 else 'png'}")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images") / "images")[0].parent


def run(weights: Path, inputs: Path, out: Path, *flags: str, threshold: str = "0.0") -> int:
    return predict_command([str(inputs), "--weights", str(weights), "--threshold", threshold, *FAST,
                            "--output_dir", str(out), *flags])


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def raw_model(model, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image alone through the model, postprocessed by the formulas: scores, labels, [x, y, w, h] boxes."""
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    h, w = image.shape[1:]
    with torch.no_grad():
        out = model([preprocess(image, SIZE, MAX_SIZE)])
    prob = out["pred_logits"][0].softmax(-1)[:, :-1]
    cx, cy, bw, bh = (out["pred_boxes"][0] * torch.tensor([w, h, w, h])).unbind(-1)
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, bw, bh], -1)
    return prob.max(-1).values.numpy(), prob.argmax(-1).numpy(), boxes.numpy()


@pytest.mark.parametrize("batch_size, workers", [(1, "0"), (4, "2")])
def test_batches_equal_the_model_one_image_at_a_time(model, weights, folder, tmp_path, batch_size, workers):
    out = tmp_path / "out"
    assert run(weights, folder, out, "--batch_size", str(batch_size), "--num_workers", workers) == 0
    found = lines(out)
    assert [e["index"] for e in found] == list(range(len(SHAPES)))
    # The tolerance of test_predict_api's batched-vs-single test (padding moves boxes <= 1% of the long side,
    # scores <= 0.014); one image at a time: the same numbers up to the files' rounding (1/100 px, 5 decimals).
    box_tol, score_tol = (0.006, 6e-6) if batch_size == 1 else (0.02, 0.03)
    for entry in found:
        path = Path(entry["file_name"])
        scores, labels, boxes = raw_model(model, path)
        assert (entry["height"], entry["width"]) == SHAPES[int(path.stem[4:])]
        assert len(entry["detections"]) == len(entry["queries"]) == TINY["num_queries"]
        for q, det in zip(entry["queries"], entry["detections"]):
            assert det["category_id"] == labels[q], path.name
            assert abs(det["score"] - scores[q]) <= score_tol, path.name
            side = max(entry["height"], entry["width"]) if batch_size > 1 else 1
            np.testing.assert_allclose(det["bbox"], boxes[q], rtol=0, atol=box_tol * side, err_msg=path.name)


def test_batches_group_images_by_shape(tmp_path):
    paths = write_folder(tmp_path / "im", [(40, 80), (80, 40)] * 6)  # landscape, portrait, landscape, ...
    for batch_size in (2, 3):
        batches = plan_batches(plan_items(paths), batch_size)
        assert sorted(i.index for b in batches for i in b) == list(range(12))
        for b in batches:  # all portrait or all landscape: no batch pads a portrait image to a landscape one
            assert len({i.index % 2 for i in b}) == 1, [i.index for i in b]
            assert len(b) == batch_size
    with pytest.raises(ValueError, match="--batch_size must be at least 1"):
        plan_batches(plan_items(paths), 0)


@pytest.mark.slow  # a subprocess start-up (importing torch), as the fault tests of training
def test_killed_run_resumes_to_the_files_of_an_uninterrupted_run(weights, folder, tmp_path, monkeypatch):
    flags = ["--batch_size", "2", "--no_draw"]
    reference = tmp_path / "reference"
    assert run(weights, folder, reference, *flags) == 0
    out = tmp_path / "out"
    rng = random.Random(int(os.environ.get(KILL_SEED_ENV, "0")))
    k = rng.randint(3, len(SHAPES) - 2)  # kill once the lines file holds at least k images
    argv = [sys.executable, "-m", "detr", "predict", str(folder), "--weights", str(weights), "--threshold", "0.0",
            *FAST, "--output_dir", str(out), *flags]
    proc = subprocess.Popen(argv, env={**ENV, SLEEP_ENV: "0.25"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    jsonl = out / "detections.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= k):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    written = jsonl.read_bytes()
    assert 0 < written.count(b"\n") < len(SHAPES) and not (out / "detections.json").exists()
    # A kill in the middle of a batch's write: the last line cut half-way (its batch is then half done).
    cut = written.rfind(b"\n", 0, len(written) - 1) + 1 + rng.randint(1, 20)
    jsonl.write_bytes(written[:cut])
    finished = written[:cut].count(b"\n")
    seen: list[int] = []
    real_detect = Detector.detect
    monkeypatch.setattr(Detector, "detect", lambda self, images, thr: seen.append(len(images)) or
                        real_detect(self, images, thr))
    assert run(weights, folder, out, *flags, "--resume") == 0
    # Finished images are not run again, except the cut line's batch-mate (its batch is re-run whole).
    assert len(SHAPES) - finished <= sum(seen) <= len(SHAPES) - finished + 1, (finished, seen)
    for name in ("detections.jsonl", "detections.json", "images.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    indexes = [e["index"] for e in lines(out)]
    assert indexes == list(range(len(SHAPES)))  # none twice, none missing
    assert sorted(e["file_name"] for e in lines(out)) == sorted(str(p) for p in folder.iterdir())
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "detections.jsonl", "images.json"]


def test_resume_refuses_results_of_other_images(weights, folder, tmp_path):
    out = tmp_path / "out"
    assert run(weights, folder, out, "--no_draw") == 0
    other = write_folder(tmp_path / "other", SHAPES[:2])[0].parent
    with pytest.raises(ValueError, match="results are of another job"):
        run(weights, other, out, "--resume")
    assert run(weights, other, out) == 0  # without --resume the earlier results are replaced
    assert len(lines(out)) == 2


@pytest.mark.slow
def test_two_torchrun_processes_write_what_one_process_writes(weights, tmp_path):
    images = write_folder(tmp_path / "images", SHAPES[:7])[0].parent  # 7: shards of 4 and 3
    reference = tmp_path / "reference"
    assert run(weights, images, reference, "--draw") == 0
    out = tmp_path / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "detr"]
    done = subprocess.run([*torchrun, "predict", str(images), "--weights", str(weights), "--threshold", "0.0",
                           *FAST, "--output_dir", str(out), "--draw"], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert "process 0 of 2: 4 of 7 images" in log and "process 1 of 2: 3 of 7 images" in log, log[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())  # no part left
    for name in ("detections.jsonl", "detections.json", "images.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert [e["index"] for e in lines(out)] == list(range(7))


def test_pictures_by_default_only_for_small_jobs(weights, tmp_path, monkeypatch, caplog):
    assert batch.DRAW_LIMIT == 50 and "up to 50 images" in _help()
    monkeypatch.setattr(batch, "DRAW_LIMIT", 3)
    caplog.set_level(logging.INFO, logger="detr")
    three = write_folder(tmp_path / "three", SHAPES[:3])[0].parent
    four = write_folder(tmp_path / "four", SHAPES[:4])[0].parent
    cases = [(three, [], True), (three, ["--no_draw"], False), (four, [], False), (four, ["--draw"], True)]
    for n, (images, flags, drawn) in enumerate(cases):
        out = tmp_path / f"out{n}"
        caplog.clear()
        assert run(weights, images, out, *flags, threshold="0.5") == 0
        pictures = sorted(p.name for p in out.glob("*.png"))
        listed = json.loads((out / "images.json").read_text())
        assert pictures == (sorted(f"{p.stem}.png" for p in images.iterdir()) if drawn else []), (n, pictures)
        assert all(("picture" in i) == drawn for i in listed)
        told = "no annotated pictures (drawn by default up to 3 images; --draw to write them)" in caplog.text
        assert told == (not flags and not drawn), (n, caplog.text)


def _help() -> str:
    from detr.cli.flags import make_parser
    from detr.cli.predict import add_arguments

    parser = make_parser("detr predict", None)
    add_arguments(parser)
    return " ".join(parser.format_help().split())


def test_bad_job_flags_are_refused(weights, folder, tmp_path, capsys):
    for flags in (["--batch_size", "0"], ["--num_workers", "-1"]):
        with pytest.raises(ValueError, match="--batch_size must be at least 1 and --num_workers at least 0"):
            run(weights, folder, tmp_path / "out", *flags)
    with pytest.raises(SystemExit) as exit_info:
        run(weights, folder, tmp_path / "out", "--draw", "--no_draw")
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
