"""benchmarks/finetune_convergence.py --smoke: a source detector trained once, fine-tuned on other classes through
the real `train`, curves checked against an independent evaluation; other_shapes.py's boxes against its pixels."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from detr.checkpoint import load_checkpoint
from detr.config import config_from_flags
from detr.evaluation.evaluate import evaluate_checkpoint

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its neighbours
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def record_train(bench, monkeypatch) -> list:
    """The Config of every `train` call the benchmark module makes (each still trains), in order."""
    calls = []
    real = bench.conv.train
    monkeypatch.setattr(bench.conv, "train", lambda cfg, progress=True: (calls.append(cfg), real(cfg, progress))[1])
    return calls


@pytest.fixture(scope="module")
def bench():
    return load("finetune_convergence")


def test_a_changed_source_is_not_taken_for_the_cached_one(bench, tmp_path, monkeypatch):
    root = tmp_path / "ft"
    argv = ["--smoke", "--rows", "vanilla", "--sizes", "16", "--iterations", "20", "--root", str(root)]
    bench.main(argv)
    calls = record_train(bench, monkeypatch)
    bench.main(argv)
    assert calls == []  # the same source: every run read from its cache
    # the source's weights change under the same settings (as a retrained source's do with other float sums)
    source = root / "source" / "runs" / "fast-seed42" / "checkpoint.pth"
    saved = torch.load(source, map_location="cpu", weights_only=False)
    name = next(k for k, v in saved["model"].items() if v.is_floating_point())
    saved["model"][name] = saved["model"][name] + 1e-3
    torch.save(saved, source)
    bench.main(argv)
    assert [cfg.train.weights for cfg in calls] == [str(source)]  # the row again, the source not
    calls.clear()
    bench.main(argv)
    assert calls == []


def test_source_is_trained_once_and_every_row_fine_tunes_it(bench, tmp_path, monkeypatch):
    calls = record_train(bench, monkeypatch)
    root = tmp_path / "ft"
    argv = ["--smoke", "--rows", "vanilla", "mal+groups", "--sizes", "16", "--iterations", "20", "--root", str(root)]
    bench.main(argv)

    source, vanilla, combined = calls
    assert source.train.weights in ("", None) and source.model.num_groups == 3  # --recipe fast from scratch
    assert source.train.backbone_warmup > 0
    checkpoint = str(root / "source" / "runs" / "fast-seed42" / "checkpoint.pth")
    for cfg in (vanilla, combined):
        assert cfg.train.weights == checkpoint
        assert (cfg.train.lr, cfg.train.lr_backbone, cfg.train.backbone_warmup) == (1e-4, 1e-5, 0)
        assert cfg.train.lr_drop > cfg.train.epochs  # a constant rate
    assert (vanilla.model.class_loss, vanilla.model.num_groups) == ("softmax", 1)
    assert (combined.model.class_loss, combined.model.num_groups) == ("mal", 3)  # a+b merges the rows

    src = load_checkpoint(checkpoint)["model"]
    for row in ("vanilla", "mal+groups"):
        run = root / "n16" / "runs" / f"{row}-seed42"
        state = load_checkpoint(run / "checkpoint.pth")["model"]
        # started from the source: 20 steps at these rates move the trunk by little; a fresh start would not match
        key = "backbone.0.body.stem.0.weight" if "backbone.0.body.stem.0.weight" in src else next(
            k for k in src if k.startswith("backbone.") and src[k].dim() == 4)
        change = (state[key] - src[key]).norm() / src[key].norm()
        assert change < 0.05, (row, float(change))
        # ids 1-5: num_classes = max id + 1 = 6 (the official rule), plus "no object" for the softmax head
        assert state["class_embed.weight"].shape[0] == (7 if row == "vanilla" else 6)
        result = json.loads((root / "n16" / f"{row}-seed42.json").read_text())
        again = evaluate_checkpoint(config_from_flags({"device": "cpu", "num_workers": 0, "batch_size": 8}),
                                    str(run / "checkpoint.pth"), progress=False)
        assert result["curve"][-1]["AP"] == pytest.approx(again["AP"], abs=1e-9)
        assert result["data"]["source"] == json.loads(
            (root / "source" / "fast-seed42.json").read_text())["hash"]  # the source enters the cache key
    table = (root / "finetune.md").read_text()
    assert "## 16 training images" in table and "| mal+groups |" in table
    assert (root / "finetune_16.png").is_file()

    calls.clear()  # the same call again: nothing is trained
    bench.main(argv)
    assert calls == []


def test_source_set_other_runs_the_other_way_round(bench, tmp_path, monkeypatch):
    calls = record_train(bench, monkeypatch)
    root = tmp_path / "rev"
    bench.main(["--smoke", "--source_set", "other", "--rows", "vanilla", "--sizes", "16", "--iterations", "10",
                "--eval_every", "10", "--root", str(root)])

    source, vanilla = calls

    def names(annotations: str) -> list[str]:
        return [c["name"] for c in json.loads(Path(annotations).read_text())["categories"]]

    # the source learns other_shapes.py's five classes, the row the demo's four
    assert names(source.data.train_annotations) == ["ring", "star", "diamond", "hexagon", "bar"]
    assert names(vanilla.data.train_annotations) == ["circle", "square", "triangle", "cross"]
    assert vanilla.train.weights == str(root / "source" / "runs" / "fast-seed42" / "checkpoint.pth")
    assert len(json.loads(Path(vanilla.data.train_annotations).read_text())["images"]) == 16
    assert "Trained on the demo's shapes" in (root / "finetune.md").read_text()
    # the set's name is in the source's cache key: a shapes source under the same root is not taken for it
    assert json.loads((root / "source" / "fast-seed42.json").read_text())["data"]["set"] == "other"


def test_unknown_rows_are_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--rows", "vanilla+nope"])
    assert "--rows: unknown row(s) ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("cls, size", [(c, (s, s)) for c in range(1, 6) for s in (30, 41)]
                         + [(5, (45, 15)), (5, (15, 45))])  # only bars are elongated
def test_other_shapes_boxes_are_the_drawn_pixels(cls, size):
    shapes = load("other_shapes")
    img = Image.new("RGB", (80, 80))
    box = [7, 9, *size]
    shapes._draw(ImageDraw.Draw(img), cls, box, (255, 255, 255))
    ys, xs = np.nonzero(np.asarray(img)[..., 0])
    drawn = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert shapes._tight(cls, box) == pytest.approx(drawn, abs=1.0)


def test_other_shapes_flat_backgrounds_are_one_colour(tmp_path):
    shapes = load("other_shapes")
    paths = shapes.make_other_shapes(tmp_path / "flat", 6, 2, 64, seed=1, flat=True)
    coco = json.loads(Path(paths["train_annotations"]).read_text())
    for image in coco["images"]:
        pixels = np.asarray(Image.open(Path(paths["train_images"]) / image["file_name"]), dtype=np.float64)
        outside = np.ones(pixels.shape[:2], bool)
        for ann in coco["annotations"]:
            if ann["image_id"] == image["id"]:
                x, y, w, h = (int(round(v)) for v in ann["bbox"])
                outside[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2] = False
        assert pixels[outside].std(0).max() < 15  # the noise's 8 and JPEG's ringing; stripes or checks: far more
    assert json.loads((tmp_path / "flat" / "other_shapes.json").read_text())["flat"] is True
    shapes.make_other_shapes(tmp_path / "textured", 2, 2, 64, seed=1)
    assert "flat" not in json.loads((tmp_path / "textured" / "other_shapes.json").read_text())  # caches kept


def test_backbone_bench_trains_detr_from_its_pretrained_trunk(tmp_path, monkeypatch):
    bench = load("backbone_convergence")
    calls = record_train(bench, monkeypatch)
    root = tmp_path / "bb"
    bench.main(["--smoke", "--rows", "vanilla", "fast", "--sizes", "16", "--iterations", "10", "--eval_every", "10",
                "--root", str(root)])

    weights = root / "pretrain" / "resnet18.pth"
    assert [c.train.backbone_weights for c in calls] == [str(weights)] * 2
    assert [(c.model.backbone, c.model.num_groups, c.train.ema_decay) for c in calls] == [
        ("resnet18", 1, 0.0), ("resnet18", 3, 0.9995)]
    assert all(c.train.backbone_warmup == 0 for c in calls)  # a pretrained trunk: no warm-up
    pretrained = torch.load(weights, weights_only=True)
    assert set(pretrained) >= {"fc.weight", "layer4.1.bn2.running_var"}  # a torchvision ResNet-18 state dict
    state = load_checkpoint(root / "n16" / "runs" / "vanilla-seed42" / "checkpoint.pth")["model"]
    # frozen BatchNorm keeps the pretrained statistics exactly; the convolutions moved little from them
    torch.testing.assert_close(state["backbone.0.body.layer4.1.bn2.running_var"], pretrained["layer4.1.bn2.running_var"],
                               rtol=0, atol=0)
    conv1 = state["backbone.0.body.conv1.weight"]
    assert (conv1 - pretrained["conv1.weight"]).norm() / pretrained["conv1.weight"].norm() < 0.05
    record = json.loads((root / "pretrain" / "resnet18.json").read_text())
    assert f"{record['label_accuracy_last_50_batches']:.3f}" in (root / "backbone.md").read_text()


def test_table_only_reads_every_cached_run_and_trains_nothing(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.conv, "train", lambda *a, **k: pytest.fail("--table_only trained"))
    curve = [{"iteration": 150, "AP": 0.1, "AP50": 0.2}, {"iteration": 300, "AP": 0.3, "AP50": 0.5}]
    for size, row, seed in ((100, "vanilla", 42), (500, "vanilla", 42), (500, "vanilla", 43), (500, "mal", 42)):
        folder = tmp_path / f"n{size}"
        folder.mkdir(exist_ok=True)
        ap = 0.2 if row == "mal" else 0.1 + 0.02 * (seed - 42)
        (folder / f"{row}-seed{seed}.json").write_text(json.dumps({
            "recipe": row, "seed": seed, "overrides": {}, "seconds_per_iteration": 0.5,
            "curve": [curve[0], {**curve[1], "AP": ap}]}))
    results = bench.main(["--table_only", "--root", str(tmp_path)])
    assert list(results) == [100, 500] and list(results[500]) == ["vanilla", "mal"]
    assert [r["seed"] for r in results[500]["vanilla"]] == [42, 43]
    table = (tmp_path / "finetune.md").read_text()
    # vanilla's final AP is the mean of its seeds, 0.11; mal crosses it between 150 (0.1) and 300 (0.2)
    assert "| mal | `(official)` | 42 | 0.200 |" in table
    assert f"| {150 + 150 * (0.11 - 0.1) / (0.2 - 0.1):.0f} |" in table
    with pytest.raises(SystemExit, match="no run JSON"):
        bench.main(["--table_only", "--root", str(tmp_path / "empty")])
