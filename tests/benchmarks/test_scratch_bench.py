"""benchmarks/scratch_convergence.py: DETR and Conditional DETR from a random ResNet-18 through the real `train`, the
curve checked against an independent evaluation, the table's crossings against a formula written here."""

from __future__ import annotations

import json

import pytest
import torch

from detr.checkpoint import load_checkpoint
from detr.config import config_from_flags
from detr.evaluation.evaluate import evaluate_checkpoint

from .test_finetune_bench import load, record_train


@pytest.fixture(scope="module")
def bench():
    return load("scratch_convergence")


def test_rows_train_a_random_resnet18_and_the_recipe_warms_it_up(bench, tmp_path, monkeypatch):
    calls = record_train(bench, monkeypatch)
    root = tmp_path / "scratch"
    bench.main(["--smoke", "--rows", "vanilla", "conditional_fast", "--sizes", "16", "--iterations", "10",
                "--eval_every", "5", "--root", str(root)])

    vanilla, fast = calls
    for cfg in calls:
        assert (cfg.model.backbone, cfg.train.backbone_weights, cfg.train.weights) == ("resnet18", "none", "")
        assert cfg.train.lr_drop > cfg.train.epochs  # a constant rate
    assert (vanilla.model.family, vanilla.model.num_groups, vanilla.train.backbone_warmup) == ("detr", 1, 0)
    assert (vanilla.train.lr, vanilla.train.lr_backbone) == (1e-4, 1e-4)
    assert (fast.model.family, fast.model.class_loss, fast.model.num_groups) == ("conditional_detr", "focal", 3)
    assert (fast.train.backbone_warmup, fast.train.lr, fast.train.ema_decay) == (bench.SMOKE_WARMUP, 2e-4, 0.9995)

    for row, warmup in (("vanilla", 0), ("conditional_fast", bench.SMOKE_WARMUP)):
        run = root / "n16" / "runs" / f"{row}-seed42"
        result = json.loads((root / "n16" / f"{row}-seed42.json").read_text())
        assert [p["iteration"] for p in result["curve"]] == [warmup + 5, warmup + 10]  # warm-up steps count
        again = evaluate_checkpoint(config_from_flags({"device": "cpu", "num_workers": 0, "batch_size": 8}),
                                    str(run / "checkpoint.pth"), progress=False)
        assert result["curve"][-1]["AP"] == pytest.approx(again["AP"], abs=1e-9)
    state = load_checkpoint(root / "n16" / "runs" / "vanilla-seed42" / "checkpoint.pth")["model"]
    # no warm-up: frozen BatchNorm keeps torchvision's initial statistics
    assert torch.equal(state["backbone.0.body.layer1.0.bn1.running_var"], torch.ones(64))
    table = (root / "scratch.md").read_text()
    assert "## 16 training images" in table
    probe = json.loads((root / "n16" / "warmup_probe.json").read_text())
    assert probe["key"]["steps"] == bench.SMOKE_WARMUP
    assert f"val object-pixel accuracy {probe['object_pixel_accuracy']:.3f}" in table


def test_pixel_accuracy_of_constant_heads(bench, tmp_path):
    from detr.models.backbone import Backbone
    from detr.models.detr import pad_images
    from detr.training.warmup import box_label_map

    paths = load("other_shapes").make_other_shapes(tmp_path / "data", 4, 4, 64, seed=1)
    cfg = bench.resolve_data(bench.config_from_flags({**bench.conv.SMOKE_SETTINGS, **bench.SETTINGS, **paths,
                                                      "scales": [64], "max_size": 96, "val_scale": 64}))
    loader = bench.make_loader(bench.build_datasets(cfg).val, 2, False, 0, 0)
    labels = torch.cat([box_label_map(t, *pad_images(list(i))[0].shape[-2:]).flatten() for i, t in loader])
    backbone = Backbone("resnet18")

    class Constant(torch.nn.Module):  # every pixel scored as class k
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 6, *x.shape[-2:])
            out[:, self.k] = 1
            return out

    assert bench.pixel_accuracy(backbone, Constant(0), loader) == {"object_pixel_accuracy": 0.0,
                                                                   "background_pixel_accuracy": 1.0}
    ring = bench.pixel_accuracy(backbone, Constant(1), loader)
    objects = labels[labels > 0]
    assert ring["object_pixel_accuracy"] == pytest.approx(float((objects == 1).float().mean()), abs=1e-6)
    assert ring["background_pixel_accuracy"] == 0.0


def test_table_counts_iterations_to_ap50_and_to_each_family_vanilla(bench, tmp_path):
    curves = {"vanilla": [0.1, 0.3], "fast": [0.4, 0.6], "conditional": [0.2, 0.45], "conditional_fast": [0.3, 0.7]}
    folder = tmp_path / "n100"
    folder.mkdir()
    for row, ap50 in curves.items():
        (folder / f"{row}-seed42.json").write_text(json.dumps({
            "recipe": row, "seed": 42, "overrides": bench.ROWS[row],
            "curve": [{"iteration": 250, "AP": a / 2, "AP50": a} for a in ap50[:1]]
            + [{"iteration": 500, "AP": a / 2, "AP50": a} for a in ap50[1:]]}))
    bench.main(["--table_only", "--root", str(tmp_path)])
    table = (tmp_path / "scratch.md").read_text()
    lines = {line.split(" | ")[0].strip("| "): line.split(" | ")
             for line in table.splitlines() if line.startswith("| ")}
    # fast: AP50 0.5 between 250 (0.4) and 500 (0.6); vanilla's final AP (0.15) already at its first evaluation
    assert lines["fast"][3] == f"{250 + 250 * (0.5 - 0.4) / (0.6 - 0.4):.0f}"
    assert lines["fast"][4] == "250" and lines["vanilla"][3] == "-"
    # conditional_fast is measured against conditional's final AP (0.225), not plain vanilla's
    assert lines["conditional_fast"][4] == f"{250 + 250 * (0.225 - 0.15) / (0.35 - 0.15):.0f}"
