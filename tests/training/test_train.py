"""The training driver: exact resume, up-front validation, fine-tuning, NaN and disk faults."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from detr.checkpoint import load_checkpoint
from detr.data.loaders import resolve_data
from detr.loss.criterion import SetCriterion
from detr.training.engine import NonFiniteLossError
from detr.training.train import _prepare, train

from ..helpers.train import config, max_weight_diff, tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Two epochs without interruption (the reference for resume tests)."""
    out = tmp_path_factory.mktemp("straight")
    train(config(data, out, ["--epochs", "2"]), progress=False)
    return out


def test_resume_is_exact(data, straight, tmp_path):
    train(config(data, tmp_path, ["--epochs", "1"]), progress=False)
    first = load_checkpoint(tmp_path / "checkpoint.pth")
    assert first["epoch"] == 0 and first["step_in_epoch"] is None
    train(config(data, tmp_path, ["--epochs", "2", "--resume", str(tmp_path / "checkpoint.pth")]), progress=False)
    resumed = load_checkpoint(tmp_path / "checkpoint.pth")
    reference = load_checkpoint(straight / "checkpoint.pth")
    assert resumed["epoch"] == reference["epoch"] == 1
    assert max_weight_diff(resumed["model"], reference["model"]) <= 1e-6
    assert max_weight_diff(first["model"], reference["model"]) > 1e-4  # epoch 2 did change the weights
    log = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1]
    assert len(log[-1]["test_coco_eval_bbox"]) == 12 and "train_loss" in log[-1] and "n_parameters" in log[-1]


def test_checkpoint_holds_everything_to_rebuild_the_run(straight):
    ckpt = load_checkpoint(straight / "checkpoint.pth")
    for key in ("model", "optimizer", "lr_scheduler", "epoch", "rng", "config", "class_names", "best_value", "best_metric"):
        assert key in ckpt, key
    assert ckpt["config"]["model"]["num_classes"] == 5  # derived: largest demo category id (4) + 1
    assert ckpt["class_names"][1:] == ["circle", "square", "triangle", "cross"]
    assert (straight / "best.pth").is_file() and (straight / "detections_val.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--lr=-1e-4"], "--lr must be >= 0"),
    (["--num_classes", "3"], "--num_classes 3 is too small"),
    (["--amp", "fp16"], "--amp fp16 needs a CUDA device"),
    (["--resume", "/nonexistent/ckpt.pth"], "--resume /nonexistent/ckpt.pth: file not found"),
])
def test_bad_options_are_refused_before_any_work(data, tmp_path, argv, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        train(config(data, out, argv), progress=False)
    assert not (out / "checkpoint.pth").exists()


def test_cuda_without_a_gpu_output_dir_file_and_missing_data(data, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA GPU"):
            train(config(data, tmp_path, ["--device", "cuda"]), progress=False)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=f"--output_dir {a_file}: is a file"):
        train(config(data, a_file), progress=False)
    missing = {**data, "train_annotations": str(tmp_path / "nope.json")}
    with pytest.raises(ValueError, match="--train_annotations .*nope.json: file not found"):
        train(config(missing, tmp_path), progress=False)


def test_too_few_queries_warns(data, tmp_path, caplog):
    cfg = config(data, tmp_path, ["--num_queries", "1", "--epochs", "1"])
    with caplog.at_level(logging.WARNING, logger="detr"):
        train(cfg, progress=False)
    assert any("--num_queries 1 is smaller than" in r.getMessage() and r.name.startswith("detr.")
               for r in caplog.records if r.levelno == logging.WARNING)


def test_finetune_with_other_num_classes_reinitialises_the_class_head(data, straight, tmp_path, caplog):
    cfg = config(data, tmp_path, ["--epochs", "1", "--num_classes", "7", "--weights",
                                  str(straight / "checkpoint.pth"), "--lr", "0", "--lr_backbone", "1e-30"])
    with caplog.at_level(logging.INFO, logger="detr"):
        train(cfg, progress=False)
    assert "class_embed is re-initialised" in caplog.text
    tuned = load_checkpoint(tmp_path / "checkpoint.pth")["model"]
    source = load_checkpoint(straight / "checkpoint.pth")["model"]
    assert tuned["class_embed.weight"].shape == (8, 32)
    assert torch.equal(tuned["bbox_embed.layers.0.weight"], source["bbox_embed.layers.0.weight"])  # lr 0


def test_weights_are_read_once(data, straight, tmp_path, monkeypatch):
    """train() reads --weights once (the family check and the loading share it): every read of a file goes
    through torch.load, counted here for the weights file."""
    weights = straight / "checkpoint.pth"
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):  # a memory-mapped peek at the saved config reads no tensor
        if isinstance(f, (str, os.PathLike)) and Path(f).resolve() == weights.resolve() and not kwargs.get("mmap"):
            reads.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    train(config(data, tmp_path, ["--epochs", "1", "--weights", str(weights), "--lr", "0"]), progress=False)
    assert len(reads) == 1


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    train(config(data, tmp_path, ["--epochs", "1"]), progress=False)
    good = load_checkpoint(tmp_path / "checkpoint.pth")
    forward = SetCriterion.forward

    def nan_ce(self, outputs, targets):
        losses = forward(self, outputs, targets)
        return {**losses, "loss_ce": losses["loss_ce"] * float("inf")} if self.training else losses

    monkeypatch.setattr(SetCriterion, "forward", nan_ce)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 0: the loss is .*loss_ce=inf"):
        train(config(data, tmp_path, ["--epochs", "2", "--resume", str(tmp_path / "checkpoint.pth")]),
              progress=False)
    kept = load_checkpoint(tmp_path / "checkpoint.pth")
    assert kept["epoch"] == 0 and max_weight_diff(kept["model"], good["model"]) == 0
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_disk_full_during_checkpoint_write_keeps_the_previous_one(data, tmp_path, monkeypatch):
    train(config(data, tmp_path, ["--epochs", "1"]), progress=False)
    save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if str(f).endswith(".tmp") and ".checkpoint.pth." in str(f):
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(28, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(config(data, tmp_path, ["--epochs", "2", "--resume", str(tmp_path / "checkpoint.pth")]),
              progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_config_round_trips_through_the_checkpoint(straight):
    from detr.config import Config

    saved = load_checkpoint(straight / "checkpoint.pth")["config"]
    assert dataclasses.asdict(Config.from_dict(saved)) == saved


def test_cpu_training_takes_a_fused_adamw_step_by_its_formula(data, tmp_path):
    """On CPU the optimizer is torch's fused AdamW (~4x faster on DETR's small tensors); its first step is
    AdamW's formula: p <- p (1 - lr wd) - lr g / (|g| + eps) (the moments' bias corrections cancel)."""
    run, _ = _prepare(resolve_data(config(data, tmp_path)), torch.device("cpu"))
    optimizer = run.optimizer
    assert optimizer.defaults["fused"]
    generator = torch.Generator().manual_seed(0)
    expected = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.randn(p.shape, generator=generator)
            g, before = p.grad.double(), p.detach().double()
            expected.append(before * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * g / (g.abs() + group["eps"]))
    optimizer.step()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len({group["lr"] for group in optimizer.param_groups}) == 2  # the backbone's rate and the transformer's
    assert max((p.detach().double() - e).abs().max().item() for p, e in zip(params, expected)) < 1e-6  # steps of ~lr
