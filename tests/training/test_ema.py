"""--ema_decay: the weight average against its formula in float64, and in training: evaluated, saved as the
checkpoint's "model" (the optimizer's weights beside it), resumed exactly."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from detr.training.ema import create_ema

from ..helpers.train import config, max_weight_diff, tiny_data


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()


def test_the_average_is_the_formula_with_its_short_early_memory():
    torch.manual_seed(0)
    net, decay = small_net(), 0.95
    ema = create_ema(net, decay)
    expected: dict[str, torch.Tensor] = {}
    for n in range(40):  # past n = 180 / 1: (1 + n) / (10 + n) reaches 0.95 at n = 170, so the ramp rules here...
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(5, 3, dtype=torch.float64))  # moves BatchNorm's running statistics and its counter
        ema.update_parameters(net)
        d = min(decay, (1 + n) / (10 + n))
        for k, v in net.state_dict().items():
            if k.endswith("num_batches_tracked"):
                expected[k] = v.clone()
            else:
                expected[k] = v.clone() if n == 0 else d * expected[k] + (1 - d) * v
    got = ema.module.state_dict()
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.allclose(got[k], expected[k], rtol=0, atol=1e-12), k
    assert int(ema.n_averaged) == 40 and int(got["1.num_batches_tracked"]) == 40


def test_the_decay_caps_the_memory_once_the_ramp_passes_it():
    net, decay = small_net(), 0.5  # (1 + n) / (10 + n) > 0.5 from n = 9 on
    ema = create_ema(net, decay)
    for n in range(12):
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float(n))
        ema.update_parameters(net)
    d = 0.5  # update 11: min(0.5, 12 / 21)
    w = ema.module.state_dict()["0.weight"]
    assert torch.allclose(w, d * before["0.weight"] + (1 - d) * 11.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1"])
def test_a_decay_outside_0_1_is_refused(tmp_path, value):
    from detr.validation import validate_config

    cfg = config(tiny_data(tmp_path / "data", 2, 2), tmp_path / "out", ["--ema_decay", value])
    with pytest.raises(ValueError, match=rf"--ema_decay must be in \[0, 1\) .*got {value}"):
        validate_config(cfg)


def test_training_evaluates_and_saves_the_average_and_resumes_exactly(tmp_path):
    from detr.checkpoint import load_checkpoint
    from detr.evaluation.evaluate import evaluate_checkpoint
    from detr.training.train import train

    data = tiny_data(tmp_path / "data", num_train=6, num_val=4)
    ema = ["--ema_decay", "0.9"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(config(data, straight, [*ema, "--epochs", "3"]), progress=False)
    train(config(data, split, [*ema, "--epochs", "2"]), progress=False)
    train(config(data, split, [*ema, "--epochs", "3", "--resume", str(split / "checkpoint.pth")]), progress=False)
    a, b = load_checkpoint(straight / "checkpoint.pth"), load_checkpoint(split / "checkpoint.pth")
    assert a["ema_updates"] == b["ema_updates"] == 3 * 3  # 6 images, batch 2: 3 steps an epoch
    assert max_weight_diff(a["model"], b["model"]) <= 1e-6
    assert max_weight_diff(a["training_model"], b["training_model"]) <= 1e-6
    assert max_weight_diff(a["model"], a["training_model"]) > 1e-5  # the average is not the optimizer's weights
    # what was evaluated after the last epoch is what the file's "model" holds (and every reader loads)
    last = json.loads((straight / "log.txt").read_text().splitlines()[-1])
    stats = evaluate_checkpoint(config(data, tmp_path / "eval"), str(straight / "checkpoint.pth"), progress=False)
    assert stats["coco_eval_bbox"] == pytest.approx(last["test_coco_eval_bbox"], abs=1e-9)
    assert stats["loss"] == pytest.approx(last["test_loss"], rel=1e-6)


def test_an_average_starts_on_resume_and_is_dropped_without_the_flag(tmp_path):
    from detr.checkpoint import load_checkpoint
    from detr.training.train import train

    data = tiny_data(tmp_path / "data", num_train=4, num_val=2)
    plain, averaged = tmp_path / "plain", tmp_path / "averaged"
    train(config(data, plain, ["--epochs", "1"]), progress=False)
    train(config(data, plain, ["--epochs", "2", "--ema_decay", "0.9", "--resume", str(plain / "checkpoint.pth")]),
          progress=False)
    assert load_checkpoint(plain / "checkpoint.pth")["ema_updates"] == 2  # only the steps after the resume
    train(config(data, averaged, ["--epochs", "1", "--ema_decay", "0.9"]), progress=False)
    first = load_checkpoint(averaged / "checkpoint.pth")
    train(config(data, averaged, ["--epochs", "2", "--resume", str(averaged / "checkpoint.pth")]), progress=False)
    second = load_checkpoint(averaged / "checkpoint.pth")
    assert "training_model" not in second  # the run goes on from the optimizer's weights, not the average
    assert max_weight_diff(second["model"], first["training_model"]) > 0
