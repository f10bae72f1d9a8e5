"""Training the mask head as the official recipe does: `--masks --frozen_weights det.pth` keeps the detector
exactly as loaded, trains only the mask head, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

import detr.training.train as train_module
from detr.checkpoint import load_checkpoint
from detr.data import make_demo_dataset
from detr.models.build import build_model
from detr.training.train import train

from .train_helpers import config, max_weight_diff

# the mask head's GroupNorm(8) needs hidden_dim / 16 and hidden_dim + nheads to be multiples of 8
SEGM = ["--hidden_dim", "128", "--nheads", "8", "--masks"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The panoptic demo's COCO instances: things with RLE masks, which `--masks` loads as "masks" targets."""
    paths = make_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=4, num_val=2, image_size=64, seed=1,
                              panoptic=True)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def detector(data, tmp_path_factory):
    """A detector file (official layout: {"model": state dict}) of the architecture the mask head goes on."""
    cfg = config(data, tmp_path_factory.mktemp("det"), ["--hidden_dim", "128", "--nheads", "8"])
    torch.manual_seed(3)
    model = build_model(train_module.resolve_data(cfg).model)
    path = tmp_path_factory.mktemp("weights") / "det.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.mark.slow
def test_frozen_detector_is_unchanged_and_resume_is_exact(data, detector, tmp_path):
    frozen = ["--frozen_weights", str(detector)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    summary = train(config(data, straight, [*SEGM, *frozen, "--epochs", "2"]), progress=False)
    assert summary["epochs_done"] == 2
    done = load_checkpoint(straight / "checkpoint.pth")
    det = load_checkpoint(detector)["model"]
    assert max_weight_diff({k: done["model"][f"detr.{k}"] for k in det}, det) == 0  # every detector tensor
    head = {k: v for k, v in done["model"].items() if not k.startswith("detr.")}
    assert len(head) == 32
    cfg = train_module.resolve_data(config(data, split, SEGM))
    torch.manual_seed(cfg.train.seed)  # as train() does before it builds the model: the mask head's start
    start = build_model(cfg.model).state_dict()
    assert done["config"]["train"]["frozen_weights"] == str(detector) and done["config"]["model"]["masks"]
    assert len(done["optimizer"]["state"]) == 32  # AdamW holds moments for the mask head only
    assert max_weight_diff(head, {k: start[k] for k in head}) > 1e-4  # the mask head trained

    train(config(data, split, [*SEGM, *frozen, "--epochs", "1"]), progress=False)
    train(config(data, split, [*SEGM, *frozen, "--epochs", "2", "--resume", str(split / "checkpoint.pth")]),
          progress=False)
    resumed = load_checkpoint(split / "checkpoint.pth")
    assert resumed["epoch"] == done["epoch"] == 1
    assert max_weight_diff(resumed["model"], done["model"]) <= 1e-6


@pytest.mark.slow
def test_joint_training_trains_the_detector_too(data, tmp_path):
    train(config(data, tmp_path, [*SEGM, "--epochs", "1"]), progress=False)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    log = (tmp_path / "log.txt").read_text()
    assert '"train_loss_mask"' in log and '"train_loss_dice"' in log and '"train_loss_ce"' in log
    assert len(ckpt["optimizer"]["state"]) > 32  # the detector too, not only the mask head
