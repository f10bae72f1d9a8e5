"""--logger tensorboard|wandb|mlflow: what each backend recorded, read back with the backend's own reader; a
failing backend changes nothing in training; a missing package fails before training, naming the extra."""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
import sys
from pathlib import Path

import pytest

from detr.checkpoint import load_checkpoint
from detr.cli.flags import build_parser
from detr.training import loggers as loggers_module
from detr.training import train as train_module
from detr.training.loggers import LoggerUnavailableError
from detr.training.train import train
from detr.validation import validate_config

from ..helpers.train import config, tiny_data

COCO_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
# 3 epochs of 2 steps, evaluated after epochs 1 and 2 (--eval_every 2, and the last)
RUN = ["--epochs", "3", "--eval_every", "2", "--steps_per_epoch", "2"]
STEPS_PER_EPOCH = 2
EVALUATED_EPOCHS = [1, 2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("demo"), num_train=4, num_val=2)


def script_evaluation(mp: pytest.MonkeyPatch) -> None:
    """Evaluations return distinct numbers (a tiny model's are all 0 or -1, which would not tell them apart) and a
    per-class AP, as the diagnostics add it; the model, its pictures and everything else are real."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(1)
        values = [round(0.1 * len(calls) + 0.01 * (i + 1), 4) for i in range(len(COCO_NAMES))]
        per_class = {"a": 0.5 + len(calls) / 100, "b": 0.25, "c": -1.0}  # -1: COCOeval's "no such boxes"
        return {"loss": 2.0 + len(calls), "coco_eval_bbox": values, "coco_summary": "",
                **dict(zip(COCO_NAMES, values)), "per_class_ap": per_class}, []

    mp.setattr(train_module, "evaluate", fake)


@pytest.fixture(scope="module")
def plain(data, tmp_path_factory):
    """The run without any logger: the reference."""
    out = tmp_path_factory.mktemp("plain")
    with pytest.MonkeyPatch.context() as mp:
        script_evaluation(mp)
        train(config(data, out, RUN), progress=False)
    return out


@pytest.fixture(scope="module")
def logged(data, tmp_path_factory):
    """The same run with all three loggers (W&B offline, MLflow in a local store)."""
    out = tmp_path_factory.mktemp("logged")
    with pytest.MonkeyPatch.context() as mp:
        script_evaluation(mp)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("WANDB_MODE", raising=False)
        mp.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        train(config(data, out, [*RUN, "--logger", "tensorboard", "wandb", "--logger", "mlflow"]), progress=False)
    return out


def evaluations(out: Path) -> list[dict]:
    """log.txt's lines that have an evaluation (the record every logger is compared with)."""
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    return [rec for rec in lines if "test_AP" in rec]


def expected_steps() -> list[int]:
    return [(e + 1) * STEPS_PER_EPOCH for e in EVALUATED_EPOCHS]


def test_tensorboard_event_file_has_the_ap_scalars(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logged / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for name in COCO_NAMES:
        events = acc.Scalars(f"val/{name}")
        assert [e.step for e in events] == expected_steps()
        assert [e.value for e in events] == pytest.approx([r[f"test_{name}"] for r in evaluations(logged)],
                                                          abs=1e-6)  # stored as float32
    assert [e.step for e in acc.Scalars("train/loss")] == [(e + 1) * STEPS_PER_EPOCH for e in range(3)]
    assert {"train/lr", "train/lr_backbone", "val/loss"} <= set(tags["scalars"])
    assert acc.Scalars("train/lr")[0].value == pytest.approx(1e-4)
    assert [e.step for e in acc.Images("val/predictions")] == expected_steps()
    per_class = [r["test_per_class_ap"] for r in evaluations(logged)]
    assert [e.value for e in acc.Scalars("val/AP_per_class/a")] == pytest.approx([p["a"] for p in per_class])
    assert [e.value for e in acc.Scalars("val/AP_per_class/b")] == pytest.approx([p["b"] for p in per_class])
    assert "val/AP_per_class/c" not in tags["scalars"]  # no boxes of c: no AP to plot


def read_wandb_records(path: Path) -> list:
    """The records of a .wandb file: LevelDB's log format (a 7-byte ':W&B' header, then 32 KiB blocks of
    chunks with a 7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST), each a wandb protobuf Record."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_has_the_ap_history(logged):
    runs = list((logged / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history = {}
    for record in read_wandb_records(runs[0]):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(row["_step"], {}).update(row)
    aps = [(step, row["val/AP"]) for step, row in sorted(history.items()) if "val/AP" in row]
    assert aps == [(s, pytest.approx(r["test_AP"], abs=1e-9)) for s, r in zip(expected_steps(), evaluations(logged))]
    assert all(f"val/{n}" in history[expected_steps()[0]] for n in COCO_NAMES)
    for step in expected_steps():  # an image is logged as a nested record: its type, size, path, ...
        assert history[step]["val/predictions/_type"] == "image-file"
        assert (runs[0].parent / "files" / history[step]["val/predictions/path"]).is_file()


def test_mlflow_local_store_has_the_ap_history(logged):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(logged / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("detr")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    for name in COCO_NAMES:
        history = client.get_metric_history(run.info.run_id, f"val/{name}")
        assert [(m.step, m.value) for m in history] == [
            (s, pytest.approx(r[f"test_{name}"], abs=1e-9)) for s, r in zip(expected_steps(), evaluations(logged))]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "val/predictions")]
    assert len(artifacts) == len(EVALUATED_EPOCHS)


def same_run(a: Path, b: Path) -> None:
    """Checkpoints equal tensor for tensor, and log.txt equal (it has no timing fields)."""
    assert (a / "log.txt").read_text() == (b / "log.txt").read_text()
    for name in ("checkpoint.pth", "best.pth"):
        x, y = load_checkpoint(a / name), load_checkpoint(b / name)
        for key in ("model", "optimizer", "lr_scheduler", "rng", "epoch", "best_value", "evals_since_best"):
            assert_equal(x[key], y[key], f"{name}[{key}]")


def assert_equal(x, y, where: str) -> None:
    import torch

    if isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            assert_equal(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            assert_equal(u, v, f"{where}[{i}]")
    elif isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    else:
        assert x == y, where


def test_loggers_change_nothing_in_training(plain, logged):
    same_run(plain, logged)


def test_a_failing_logger_warns_once_and_training_is_unchanged(data, plain, tmp_path, monkeypatch, caplog):
    from torch.utils.tensorboard import SummaryWriter

    real = SummaryWriter.add_scalar
    calls = []

    def disk_full(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    script_evaluation(monkeypatch)
    monkeypatch.setattr(loggers_module, "prediction_picture", lambda *a, **k: 1 / 0)
    with caplog.at_level(logging.WARNING, logger="detr"):
        train(config(data, tmp_path, [*RUN, "--logger", "tensorboard"]), progress=False)
    same_run(plain, tmp_path)
    assert len(calls) == 2  # dropped after its first failure
    failed = [m for m in caplog.messages if "--logger tensorboard failed" in m]
    assert len(failed) == 1 and "No space left on device" in failed[0]


def test_a_picture_that_fails_to_draw_warns(data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(loggers_module, "prediction_picture", lambda *a, **k: 1 / 0)
    with caplog.at_level(logging.WARNING, logger="detr"):
        train(config(data, tmp_path, ["--epochs", "1", "--steps_per_epoch", "1", "--logger", "tensorboard"]),
              progress=False)
    assert any("could not draw the predictions picture (ZeroDivisionError" in m for m in caplog.messages)
    assert (tmp_path / "checkpoint.pth").is_file()


@pytest.mark.parametrize(("name", "module"), [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb"),
                                              ("mlflow", "mlflow")])
def test_a_missing_package_fails_before_training(data, tmp_path, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` finds when the package is not installed
    out = tmp_path / "out"
    with pytest.raises(LoggerUnavailableError, match=rf"pip install 'detr-aligned\[{name}\]'"):
        train(config(data, out, ["--epochs", "1", "--logger", name]), progress=False)
    assert not out.exists()  # nothing was started


def test_logger_flag_takes_several_names_and_repeats(data, tmp_path):
    parser = build_parser("test", "")
    assert parser.parse_args(["--logger", "tensorboard", "wandb"]).logger == ["tensorboard", "wandb"]
    assert parser.parse_args(["--logger", "wandb", "--logger", "mlflow"]).logger == ["wandb", "mlflow"]
    assert config(data, tmp_path, []).train.logger == []
    with pytest.raises(SystemExit):
        parser.parse_args(["--logger", "comet"])


@pytest.mark.parametrize(("changes", "message"), [
    ({"logger": ["comet"]}, "--logger must be among tensorboard, wandb, mlflow, got comet"),
    ({"logger": "tensorboard"}, "--logger takes a list of names"),
    ({"logger": ["tensorboard"], "output_dir": ""}, "--logger tensorboard writes under --output_dir"),
])
def test_logger_options_are_checked(data, tmp_path, changes, message):
    cfg = config(data, tmp_path, [])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))  # as the Python API may
    with pytest.raises(ValueError, match=message):
        validate_config(cfg)
