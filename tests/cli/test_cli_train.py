"""`detr train` / `detr eval` end to end in subprocesses, and clear errors with exit code 2."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from detr import cli
from detr.checkpoint import load_checkpoint

from ..helpers.train import TINY_FLAGS, data_flags, run_cli, tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("demo"), num_train=4, num_val=4)


@pytest.mark.slow
def test_train_then_eval_end_to_end(data, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(["train", *TINY_FLAGS, *data_flags(data), "--epochs", "1", "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Average Precision" in proc.stderr and "best val AP" in proc.stderr  # logged (INFO) to stderr
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert log[0]["epoch"] == 0 and len(log[0]["test_coco_eval_bbox"]) == 12
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["config"]["model"]["hidden_dim"] == 32 and ckpt["config"]["data"]["train_images"] == data["train_images"]
    detections = json.loads((out / "detections_val.json").read_text())
    assert {"image_id", "category_id", "bbox", "score"} <= detections[0].keys()

    proc = run_cli(["eval", "--weights", str(out / "checkpoint.pth"), "--device", "cpu", "--num_workers", "0",
                    "--output_dir", str(tmp_path / "eval"), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and "Average Precision" not in proc.stderr and "eval:" not in proc.stderr  # --quiet
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["coco_eval_bbox"] == pytest.approx(log[0]["test_coco_eval_bbox"], abs=1e-9)


def test_bad_arguments_exit_2_with_a_message_naming_the_argument():
    proc = run_cli(["train", "--batch_size", "0", "--device", "cpu"], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "detr train: error: --batch_size must be >= 1, got 0"


@pytest.mark.parametrize("argv, message", [
    (["train", "--lr=-1"], "--lr must be >= 0"),
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--amp", "fp8"], "--amp must be one of"),
    (["train", "--train_images", "/nope"], "--train_images needs --train_annotations"),
    (["train", "--coco_path", "/nope/coco"], "--coco_path /nope/coco: folder not found"),
    (["train", "--frozen_weights", "det.pth"], "--frozen_weights trains the mask head on a frozen detector"),
    (["train", "--masks", "--frozen_weights", "/nope.pth"], "--frozen_weights /nope.pth: file not found"),
    (["eval"], "--weights FILE is needed"),
    (["eval", "--weights", "/nope.pth"], "--weights /nope.pth: file not found"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_cli_errors_in_process(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--device", "cpu"] if argv[0] != "frobnicate" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_output_dir_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert cli.main(["train", "--device", "cpu", "--output_dir", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_help_lists_the_official_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--lr_backbone", "--clip_max_norm", "--no_aux_loss", "--set_cost_giou", "--coco_path", "--resume"):
        assert flag in text
    assert cli.main([]) == 0 and "demo" in capsys.readouterr().out


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["train --resume", "train --weights", "eval --weights", "train --eval --resume"])
def test_malicious_checkpoint_is_refused_and_never_runs(how, data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Payload(marker)}, evil)
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    command, *flags = how.split()
    model = TINY_FLAGS if command == "train" else ["--device", "cpu", "--num_workers", "0"]  # eval: no training flag
    for path in (evil, raw):
        argv = [command, *flags, str(path), *model, *data_flags(data), "--output_dir", str(tmp_path / "o")]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert path.name in err
    assert not marker.exists()


def test_eval_on_other_data_keeps_the_checkpoints_sizes_unless_given(data, tmp_path, caplog):
    """Data flags replace the checkpoint's data but not its validation sizes, unless size flags are given; sizes
    given that differ from the checkpoint's are named in a warning (a model validated at 64 px measured AP 0.000
    on the demo's model at the default 800)."""
    import logging

    from detr import cli

    out = tmp_path / "run"
    assert cli.main(["train", *TINY_FLAGS, *data_flags(data), "--val_scale", "64", "--epochs", "1",
                     "--output_dir", str(out)]) == 0
    evaluate = ["eval", "--weights", str(out / "checkpoint.pth"), "--val_images", data["val_images"],
                "--val_annotations", data["val_annotations"], "--device", "cpu", "--num_workers", "0"]

    def detections(flags: list[str], folder: str) -> list[dict]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="detr.evaluation.evaluate"):
            assert cli.main([*evaluate, *flags, "--output_dir", str(tmp_path / folder)]) == 0
        return json.loads((tmp_path / folder / "detections_val.json").read_text())

    implicit = detections([], "implicit")  # boxes depend on the input size: the same boxes, the same sizes
    assert "validated at" not in caplog.text
    assert detections(["--val_scale", "64", "--max_size", "96"], "explicit") == implicit
    assert "validated at" not in caplog.text
    assert detections(["--val_scale", "80"], "other") != implicit
    assert "--val_scale 64 --max_size 96; evaluating at 80 / 96" in caplog.text
    assert str(out / "checkpoint.pth") in caplog.text
    evaluate = evaluate[:3] + evaluate[7:]  # no data flags: the checkpoint's data, still at the sizes given
    own_data = detections(["--val_scale", "80"], "own_data")
    assert "evaluating at 80 / 96" in caplog.text
    assert own_data == json.loads((tmp_path / "other" / "detections_val.json").read_text())
