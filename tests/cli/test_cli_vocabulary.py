"""One CLI vocabulary: a parser per command with only its flags, one spelling per idea (old ones warned about),
no prefix matching, `detr train` refusing to run without data, closed choices checked in one place."""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

import pytest

from detr import cli
from detr.cli import eval as eval_cli
from detr.cli import explain, export, predict
from detr.cli import flags as cli_flags
from detr.cli import train as train_cli
from detr.config import Config, uses_sigmoid
from detr.validation import validate_config

# What only training reads: none of these may appear in `detr eval --help`.
TRAINING_FLAGS = {"--mal_gamma", "--matcher_iou_power", "--k_one2many", "--one2many_loss_coef", "--mosaic_prob",
                  "--mixup_prob", "--lr", "--lr_backbone", "--epochs", "--batch_size", "--weight_decay", "--lr_drop",
                  "--clip_max_norm", "--dn_number", "--dn_box_noise", "--dn_label_noise", "--recipe", "--ema_decay",
                  "--num_groups", "--set_cost_class", "--set_cost_bbox", "--cls_loss_coef", "--eos_coef",
                  "--frozen_weights", "--backbone_weights", "--backbone_warmup", "--steps_per_epoch", "--eval_every",
                  "--resume", "--eval", "--no_aux_loss", "--no_random_crop", "--dropout", "--seed"}
# What evaluating an official file or a checkpoint on other data needs.
EVAL_FLAGS = {"--weights", "--model", "--dilation", "--nheads", "--val_scale", "--max_size", "--device",
              "--output_dir", "--masks", "--coco_path", "--val_images", "--val_annotations", "--num_workers"}
# The closed choices, written out here (not read from the code under test).
CHOICES = {("model", "class_loss"): ("softmax", "varifocal", "focal", "mal"),
           ("model", "family"): ("detr", "conditional_detr"),
           ("model", "position_embedding"): ("sine", "learned"), ("train", "amp"): ("none", "bf16", "fp16"),
           ("train", "recipe"): ("official", "fast")}


def help_flags(argv: list[str], capsys) -> set[str]:
    """The options `detr ... --help` lists."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    usage = capsys.readouterr().out.split("\n\n")[0]  # the usage lines: every option, once
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", usage))


def test_eval_help_offers_no_training_flag(capsys):
    shown = help_flags(["eval", "--help"], capsys)
    assert not shown & TRAINING_FLAGS, sorted(shown & TRAINING_FLAGS)
    assert EVAL_FLAGS <= shown, sorted(EVAL_FLAGS - shown)
    assert TRAINING_FLAGS - {"--eval"} <= help_flags(["train", "--help"], capsys)  # training keeps them all


@pytest.mark.parametrize("command", ["train", "eval", "predict", "explain", "export"])
def test_help_shows_one_spelling(command, capsys):
    shown = help_flags([command, "--help"], capsys)
    assert not {f for f in shown if "-" in f[2:]}, "hyphenated flags in --help"
    assert "--size" not in shown and ("--output" not in shown or command == "export")  # export's: the file


@pytest.mark.parametrize("argv, unknown", [
    (["train", "--data_fil", "coco", "--epochs", "0"], "--data_fil"),
    (["train", "--dataset", "coco", "--epochs", "0"], "--dataset"),  # was read as --dataset_file
    (["train", "--coco", "/data", "--epochs", "0"], "--coco"),
    (["eval", "--weigh", "x.pth"], "--weigh"),
    (["predict", "x.png", "--thresh", "0.5"], "--thresh"),
    (["explain", "x.png", "--pix", "1,1"], "--pix"),
    (["export", "--post"], "--post"),
    (["plot", "run", "--out", "x.png"], "--out"),
    (["convert", "--to", "hf", "out", "--weig", "x.pth"], "--weig"),
    (["demo", "--num_tr", "5", "--epochs", "-1"], "--num_tr"),
])
def test_no_prefix_matching(argv, unknown, capsys, monkeypatch):
    monkeypatch.setattr(train_cli, "train", _must_not_run)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {unknown}" in capsys.readouterr().err


def _must_not_run(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("training started")


def _captured(monkeypatch, module: Any, name: str) -> list[Any]:
    """Replace module.name by a recorder; returns what it was called with."""
    calls: list[Any] = []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append((a, k)) or 0)
    return calls


def _namespace(module: Any, argv: list[str], monkeypatch) -> argparse.Namespace:
    """The arguments `detr <module>` parses from `argv` (its run replaced)."""
    calls = _captured(monkeypatch, module, "run")
    assert module.main(argv) == 0
    return calls[0][0][0]


SIZES = [("--size", "--val_scale", "val_scale", 64), ("--max-size", "--max_size", "max_size", 96)]
OUTPUT = ("--output", "--output_dir", "output_dir", "out")  # export's --output is the file it writes


@pytest.mark.parametrize("module, positional, old, new, field, value", [
    *[(m, ["x.png"], *s) for m in (predict, explain) for s in (*SIZES, OUTPUT)], *[(export, [], *s) for s in SIZES]])
def test_old_spellings_of_detector_commands(module, positional, old, new, field, value, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="detr")
    assert getattr(_namespace(module, [*positional, new, str(value)], monkeypatch), field) == value
    assert "deprecated" not in caplog.text
    given_twice = [*positional, old, str(value), old, str(value)]
    assert getattr(_namespace(module, given_twice, monkeypatch), field) == value
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warnings == [f"{old} is deprecated: use {new}"]  # once, naming the new spelling


@pytest.mark.parametrize("old, new, section, field, value", [
    ("--max-size", "--max_size", "data", "max_size", 96), ("--size", "--val_scale", "data", "val_scale", 64),
    ("--output", "--output_dir", "train", "output_dir", "elsewhere"),
])
def test_old_spellings_of_train_and_eval(old, new, section, field, value, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="detr")
    trained = _captured(monkeypatch, train_cli, "train")
    evaluated = _captured(monkeypatch, eval_cli, "evaluate_checkpoint")
    value = str(tmp_path / value) if section == "train" else value
    for spelling in (new, old):
        assert cli.main(["train", "--coco_path", str(tmp_path), "--device", "cpu", spelling, str(value)]) == 0
        assert cli.main(["eval", "--weights", "w.pth", "--device", "cpu", spelling, str(value)]) == 0
    for calls in (trained, evaluated):
        assert [getattr(getattr(c[0][0], section), field) for c in calls] == [value, value]
    assert [r.getMessage() for r in caplog.records] == [f"{old} is deprecated: use {new}"] * 2


def test_eval_resume_is_an_old_spelling_of_weights(monkeypatch, caplog):
    evaluated = _captured(monkeypatch, eval_cli, "evaluate_checkpoint")
    assert cli.main(["eval", "--resume", "w.pth", "--device", "cpu"]) == 0
    assert evaluated[0][0][1] == "w.pth" and "--resume is deprecated: use --weights" in caplog.text


def test_train_without_data_refuses(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(train_cli, "train", _must_not_run)
    assert cli.main(["train", "--device", "cpu", "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    for named in ("--coco_path", "--train_images", "--train_annotations", "detr demo"):
        assert named in err
    assert not (tmp_path / "run").exists()


def test_train_eval_needs_no_data_flags(monkeypatch):
    evaluated = _captured(monkeypatch, train_cli, "evaluate")
    assert cli.main(["train", "--eval", "--resume", "r.pth", "--device", "cpu"]) == 0
    assert evaluated[0][0][2] == "r.pth"


def test_a_data_flag_added_later_counts_as_data():
    """The hook for `--data DIR`: a namespace with `data` set has data."""
    assert cli_flags.has_data(argparse.Namespace(data="folder"))
    assert not cli_flags.has_data(argparse.Namespace(data=None, coco_path=None))


def test_usage_no_longer_promises_the_demo_fallback():
    train_line = next(line for line in cli.usage().splitlines() if line.strip().startswith("train "))
    assert "demo" not in train_line


def test_closed_choices_are_literals_checked_in_one_place():
    from typing import Literal, get_args, get_origin, get_type_hints

    found = {}
    for section in ("model", "loss", "data", "train"):
        for name, hint in get_type_hints(type(getattr(Config(), section))).items():
            if get_origin(hint) is Literal:
                found[(section, name)] = get_args(hint)
    assert found == CHOICES
    for (section, name), allowed in CHOICES.items():
        cfg = Config()
        cfg.train.device = "cpu"
        setattr(getattr(cfg, section), name, "bogus")
        with pytest.raises(ValueError) as e:
            validate_config(cfg)
        text = str(e.value)
        assert (f"--{name}" if name != "family" else "--model") in text and "'bogus'" in text
        assert all(value in text for value in allowed)


@pytest.mark.parametrize("argv, message", [
    (["--position_embedding", "sinus"], "--position_embedding must be one of sine, learned, got 'sinus'"),
    (["--class_loss", "sigmoid"], "--class_loss must be one of softmax, varifocal, focal, mal, got 'sigmoid'"),
    (["--recipe", "faster"], "--recipe must be one of official, fast, got 'faster'"),
    (["--dataset_file", "voc"], "--dataset_file voc: must be one of coco, coco_panoptic"),
])
def test_bad_choice_on_the_command_line(argv, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(train_cli, "train", _must_not_run)
    assert cli.main(["train", "--coco_path", str(tmp_path), "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


def test_uses_sigmoid():
    assert [uses_sigmoid(h) for h in ("softmax", "varifocal", "focal", "mal")] == [False, True, True, True]
    with pytest.raises(ValueError, match="class_loss must be one of softmax, varifocal, focal, mal, got 'sigmoid'"):
        uses_sigmoid("sigmoid")
