"""Early stopping (--patience) and the progress lines of runs without progress bars."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from detr.checkpoint import load_checkpoint
from detr.training import train as train_module
from detr.training.train import train
from detr.validation import validate_config

from ..helpers.train import config, tiny_data

FAST = ["--steps_per_epoch", "1"]  # one optimizer step per epoch: the tests count evaluations, not learning


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("demo"), num_train=4, num_val=2)


def stop_after(aps: list[float], patience: int | None, since_best: int = 0, best: float = -math.inf) -> int | None:
    """The rule, written out: the 1-based evaluation after which `patience` evaluations in a row brought no
    strictly better AP (None: never)."""
    for i, ap in enumerate(aps, 1):
        if ap > best:
            best, since_best = ap, 0
        else:
            since_best += 1
        if patience is not None and since_best >= patience:
            return i
    return None


def script_evaluation(monkeypatch, aps: list[float]) -> list[int]:
    """Make training's evaluation return `aps` in turn (and no detections); returns the list of calls made."""
    calls: list[int] = []

    def fake(*args, **kwargs):
        ap = aps[len(calls)]
        calls.append(len(calls))
        names = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                 "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
        return {"loss": 1.0, "coco_eval_bbox": [ap] * 12, "coco_summary": "", **dict.fromkeys(names, ap)}, []

    monkeypatch.setattr(train_module, "evaluate", fake)
    return calls


def log_epochs(out) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]


@pytest.mark.parametrize(("aps", "patience"), [
    ([0.1, 0.3, 0.2, 0.25, 0.28, 0.5], 3),  # stops after the 5th evaluation
    ([0.1, 0.1, 0.2, 0.2, 0.2, 0.2], 2),  # an equal AP is no improvement
    ([0.1, 0.3, 0.2, 0.25, 0.28, 0.5], None),  # no --patience: all epochs
])
def test_early_stopping_stops_where_the_rule_says(data, tmp_path, monkeypatch, caplog, aps, patience):
    calls = script_evaluation(monkeypatch, aps)
    argv = ["--epochs", str(len(aps)), *FAST, *(["--patience", str(patience)] if patience else [])]
    with caplog.at_level(logging.INFO, logger="detr"):
        summary = train(config(data, tmp_path, argv), progress=False)
    expected = stop_after(aps, patience) or len(aps)
    assert len(calls) == summary["epochs_done"] == expected
    assert log_epochs(tmp_path) == list(range(expected))
    if stop_after(aps, patience) is None:
        assert summary["stopped"] is None
        return
    best = max(aps[:expected])
    best_epoch = aps.index(best)  # the first evaluation of the best value (one evaluation per epoch)
    assert summary["best_value"] == best and summary["best_epoch"] == best_epoch
    reason = summary["stopped"]
    assert "early stopping" in reason and "AP" in reason and f"{best:.4f}" in reason
    assert f"after epoch {best_epoch}" in reason and f"{patience} evaluation" in reason
    assert reason in caplog.text  # the log says why it stopped
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == best_epoch


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_resumed_run_keeps_the_count(data, tmp_path, monkeypatch, old_checkpoint):
    aps = [0.1, 0.3, 0.2, 0.25, 0.28, 0.5]
    script_evaluation(monkeypatch, aps[:3])
    train(config(data, tmp_path, ["--epochs", "3", "--patience", "2", *FAST]), progress=False)
    ckpt_path = tmp_path / "checkpoint.pth"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["evals_since_best"] == 1  # 0.2 after the best 0.3
    if old_checkpoint:  # written before early stopping existed: resumes counting from 0
        del ckpt["evals_since_best"]
        torch.save(ckpt, ckpt_path)
    calls = script_evaluation(monkeypatch, aps[3:])
    summary = train(config(data, tmp_path, ["--epochs", "6", "--patience", "2", "--resume", str(ckpt_path),
                                            *FAST]), progress=False)
    kept = 0 if old_checkpoint else 1
    expected = stop_after(aps[3:], 2, since_best=kept, best=0.3)
    assert len(calls) == expected == (2 if old_checkpoint else 1)
    assert summary["epochs_done"] == 3 + expected and "early stopping" in summary["stopped"]
    assert log_epochs(tmp_path) == list(range(3 + expected))


def test_patience_must_be_positive(data, tmp_path):
    with pytest.raises(ValueError, match="--patience must be >= 1"):
        validate_config(config(data, tmp_path, ["--patience", "0"]))


def test_progress_lines_without_a_terminal(data, tmp_path, caplog):
    """pytest's stderr is no terminal: tqdm draws no bars, so each epoch and evaluation logs one INFO line."""
    with caplog.at_level(logging.INFO, logger="detr"):
        train(config(data, tmp_path, ["--epochs", "3", "--eval_every", "2", *FAST]), progress=True)
    records = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    epoch_lines = [m for m in caplog.messages if m.startswith("epoch ")]
    eval_lines = [m for m in caplog.messages if m.startswith("eval after epoch")]
    assert len(epoch_lines) == 3 and len(eval_lines) == 2  # evaluations after epochs 1 and 2 (the last)
    for line, rec in zip(epoch_lines, records):
        e = rec["epoch"]
        assert line.startswith(f"epoch {e} ({e + 1}/3): loss {rec['train_loss']:.4f}, ")
        assert "elapsed, about " in line and line.endswith(" left")
    assert epoch_lines[-1].endswith("about 0:00 left")
    for line, rec in zip(eval_lines, [r for r in records if "test_AP" in r]):
        assert line == f"eval after epoch {rec['epoch']}: AP {rec['test_AP']:.3f}, AP50 {rec['test_AP50']:.3f}"


def test_no_progress_lines_with_bars(data, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(train_module, "bars_shown", lambda progress: True)  # as on a terminal
    with caplog.at_level(logging.INFO, logger="detr"):
        train(config(data, tmp_path, ["--epochs", "1", *FAST]), progress=True)
    assert not [m for m in caplog.messages if m.startswith(("epoch ", "eval after epoch"))]
