"""Training the mask head as the official recipe does: `--masks --frozen_weights det.pth` keeps the detector
exactly as loaded, trains only the mask head, and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

import detr.training.train as train_module
from detr import create_model
from detr.checkpoint import load_checkpoint
from detr.data import make_demo_dataset
from detr.models.build import build_model
from detr.training.engine import clip_gradients
from detr.training.state import Progress, best_so_far
from detr.training.train import train

from ..helpers.train import config, max_weight_diff

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
    log = [json.loads(line) for line in (straight / "log.txt").read_text().splitlines()]
    assert done["best_metric"] == "mask_AP" and "test_PQ" not in log[0]  # instances only: no PQ to follow
    assert done["best_value"] == max(entry["test_mask_AP"] for entry in log)

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


def small_segmentation_model() -> torch.nn.Module:
    """A small Conditional DETR segmentation model on the tiny trunk (the panoptic demo's architecture, thinner)."""
    return create_model("conditional_detr_r50", backbone="tiny", num_classes=8, hidden_dim=128, nheads=8,
                        enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=4, masks=True)


def _grads_by_part(model: torch.nn.Module, detector: float, head: float, seed: int = 0) -> None:
    """Random gradients, `detector` times N(0, 1) on the detector's trainable parameters, `head` times on the rest."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=g) * (detector if name.startswith("detr.") else head)


def _clipped(grads: list[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], float]:
    """The clip written out in float64: scale by min(1, max_norm / (norm + 1e-6)) (torch's formula); and the norm."""
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    scale = min(1.0, max_norm / (norm + 1e-6))
    return [g.double() * scale for g in grads], norm


@pytest.mark.parametrize("frozen", [False, True])
def test_joint_training_clips_the_mask_head_on_its_own(frozen):
    """Jointly trained, the detector's and the mask head's gradients are each clipped to --clip_max_norm (one
    global clip would shrink the mask head's ~50x smaller gradients under AdamW's eps); with a frozen detector the
    mask head alone is clipped, as the official code's global clip does then."""
    model = small_segmentation_model()
    if frozen:
        model.freeze_detector()
    _grads_by_part(model, detector=1.0, head=1e-3)
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    det = [p.grad.clone() for n, p in named if n.startswith("detr.")]
    head = [p.grad.clone() for n, p in named if not n.startswith("detr.")]
    assert bool(det) != frozen and head
    want_det, det_norm = _clipped(det, 0.1) if det else ([], 0.0)
    want_head, head_norm = _clipped(head, 0.1)
    norm = clip_gradients(model, 0.1)
    assert norm.item() == pytest.approx((det_norm**2 + head_norm**2) ** 0.5, rel=1e-5)
    assert head_norm > 0.1  # the head's own clip is active: its gradients end at norm 0.1, not 0.1 / total
    for got, want in zip([p.grad for _, p in named], want_det + want_head):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-12)


def test_a_detector_keeps_the_global_clip():
    model = create_model("detr_r50", backbone="resnet18", num_classes=5, hidden_dim=32, nheads=2, enc_layers=1,
                         dec_layers=1, dim_feedforward=64, num_queries=8)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    want, norm = _clipped([p.grad for p in model.parameters()], 0.1)
    assert clip_gradients(model, 0.1).item() == pytest.approx(norm, rel=1e-4)  # fp32 sums over 11M values
    for got, w in zip([p.grad for p in model.parameters()], want):
        torch.testing.assert_close(got.double(), w, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("epochs, best_epochs", [
    # a frozen detector: box AP stays, mask AP picks the epoch
    ([{"AP": 0.3, "mask_AP": 0.1}, {"AP": 0.3, "mask_AP": 0.2}, {"AP": 0.3, "mask_AP": 0.15}], [0, 1]),
    # panoptic data: PQ picks, whatever the APs do
    ([{"AP": 0.5, "mask_AP": 0.4, "PQ": 0.3}, {"AP": 0.6, "mask_AP": 0.5, "PQ": 0.2}], [0]),
    # a detector: box AP, a tie keeps the earlier epoch
    ([{"AP": 0.2}, {"AP": 0.4}, {"AP": 0.4}, {"AP": 0.1}], [0, 1]),
])
def test_best_checkpoint_follows_pq_then_mask_ap_then_box_ap(epochs, best_epochs):
    progress = Progress()
    assert [e for e, stats in enumerate(epochs) if progress.update_best(stats, e)] == best_epochs
    assert progress.best_epoch == best_epochs[-1]


def test_an_older_checkpoints_best_was_box_ap():
    progress = Progress(0, 0, *best_so_far({"best_ap": 0.4, "best_epoch": 3}))
    assert (progress.best_value, progress.best_epoch, progress.best_metric) == (0.4, 3, "AP")
    assert not progress.update_best({"AP": 0.35}, 4) and progress.update_best({"AP": 0.45}, 5)
    assert best_so_far({}) == (None, None, None)
