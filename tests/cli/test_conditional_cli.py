"""Conditional DETR through every command: train, --resume, eval, predict, export, explain, loading, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr import cli
from detr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detr.inference.detector import Detector
from detr.models.conditional import ConditionalDETR

from ..helpers.train import config, data_flags, max_weight_diff, tiny_data

# --model conditional_detr_r50 with a small model on top (later flags win): tiny trunk, d=64, 2+2 layers.
SMALL = ["--model", "conditional_detr_r50", "--backbone", "tiny", "--hidden_dim", "64", "--nheads", "4",
         "--enc_layers", "2", "--dec_layers", "2", "--dim_feedforward", "128", "--num_queries", "8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("demo"), num_train=4, num_val=2)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Two epochs straight, and one epoch then --resume to two."""
    from detr.training.train import train

    root = tmp_path_factory.mktemp("runs")
    train(config(data, root / "straight", [*SMALL, "--epochs", "2"]), progress=False)
    train(config(data, root / "split", [*SMALL, "--epochs", "1"]), progress=False)
    train(config(data, root / "split", [*SMALL, "--epochs", "2", "--resume", str(root / "split" / "checkpoint.pth")]),
          progress=False)
    return root


def test_model_flag_sets_the_family_and_the_paper_defaults(data, tmp_path):
    cfg = config(data, tmp_path, ["--model", "conditional_detr_r50"])
    assert (cfg.model.family, cfg.model.class_loss) == ("conditional_detr", "focal")
    criterion = detr.create_criterion(cfg.model.num_classes or 5, 6, class_loss=cfg.model.class_loss,
                                      **vars(cfg.loss))
    assert criterion.matcher.cost_class == 2 and criterion.weight_dict["loss_ce"] == 2  # Conditional DETR's 2 / 2
    paper = detr.create_model("conditional_detr_r50_dc5", num_classes=91)
    assert isinstance(paper, ConditionalDETR) and paper.num_queries == 300 and paper.class_embed.out_features == 91
    assert paper.backbone[0].body.layer4[1].conv2.dilation == (2, 2)
    assert len(paper.transformer.encoder.layers) == len(paper.transformer.decoder.layers) == 6
    assert paper.transformer.decoder.layers[0].linear1.out_features == 2048


def test_training_resumes_exactly_and_the_checkpoint_records_the_family(trained):
    a, b = load_checkpoint(trained / "straight" / "checkpoint.pth"), load_checkpoint(trained / "split" / "checkpoint.pth")
    assert a["config"]["model"]["family"] == "conditional_detr"
    assert "transformer.decoder.ref_point_head.layers.0.weight" in a["model"]
    assert max_weight_diff(a["model"], b["model"]) <= 1e-6


def test_eval_command_reads_the_family(trained, data, tmp_path):
    out = tmp_path / "eval"
    assert cli.main(["eval", "--weights", str(trained / "straight" / "checkpoint.pth"), "--device", "cpu",
                     "--num_workers", "0", "--output_dir", str(out), "--quiet"]) == 0
    log = [json.loads(line) for line in (trained / "straight" / "log.txt").read_text().splitlines()]
    assert json.loads((out / "eval.json").read_text())["coco_eval_bbox"] == pytest.approx(
        log[-1]["test_coco_eval_bbox"], abs=1e-9)


def test_detector_loads_ours_and_an_official_layout_file(trained, tmp_path):
    """Our checkpoint and its bare state dict (official layout, no config; the family is told by its keys) give
    the same model and the sigmoid
    top-k detections (Conditional DETR's postprocessing) computed here from the logits."""
    ours = Detector.from_pretrained(trained / "straight" / "checkpoint.pth", threshold=0.0)
    assert isinstance(ours.model, ConditionalDETR)
    bare = tmp_path / "official.pth"
    save_checkpoint(bare, {"model": ours.model.state_dict()})
    official = Detector.from_pretrained(bare, threshold=0.0, size=ours.size, max_size=ours.max_size,
                                        nheads=4)  # what shapes cannot tell
    assert isinstance(official.model, ConditionalDETR) and official.model.class_loss == "focal"
    picture = torch.rand(3, 70, 90)
    found, again = ours(picture), official(picture)
    assert torch.equal(found.boxes, again.boxes) and torch.equal(found.scores, again.scores)
    with torch.no_grad():
        logits = ours.model([ours.preprocess(picture)])["pred_logits"][0]  # [Q, C]
    top = logits.sigmoid().flatten().topk(len(found))
    assert torch.allclose(found.scores, top.values, atol=1e-6)
    assert found.labels.tolist() == (top.indices % logits.shape[1]).tolist()


def test_a_file_of_the_other_family_is_refused_naming_both(trained, data, tmp_path):
    conditional = load_checkpoint(trained / "straight" / "checkpoint.pth")["model"]
    bare = tmp_path / "conditional.pth"
    save_checkpoint(bare, {"model": conditional})
    with pytest.raises(CheckpointError, match=r"holds conditional_detr weights, but a detr model.*ref_point_head"):
        Detector.from_pretrained(bare, model="detr_r50")
    plain = detr.create_model("detr_r50", num_classes=5, backbone="tiny", hidden_dim=64, nheads=4, enc_layers=1,
                              dec_layers=1, dim_feedforward=64, num_queries=8)
    detr_file = tmp_path / "detr.pth"
    save_checkpoint(detr_file, {"model": plain.state_dict()})
    with pytest.raises(CheckpointError, match=r"holds detr weights, but a conditional_detr model.*multihead_attn"):
        Detector.from_pretrained(detr_file, model="conditional_detr_r50")
    from detr.training.train import train
    from detr.weights.finetune import load_finetune_weights

    with pytest.raises(CheckpointError, match="holds detr weights, but a conditional_detr model"):
        train(config(data, tmp_path / "run", [*SMALL, "--weights", str(detr_file)]), progress=False)
    with pytest.raises(CheckpointError, match="holds detr weights, but a conditional_detr model"):
        load_finetune_weights(detr.create_model("conditional_detr_r50", num_classes=5, backbone="tiny", hidden_dim=64,
                                                nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=64,
                                                num_queries=8), str(detr_file))


def test_predict_explain_and_export_commands(trained, tmp_path, capsys):
    from detr.inference.explain import explain
    from detr.inference.export import onnx_outputs

    weights = str(trained / "straight" / "checkpoint.pth")
    pairs = min(100, 8 * load_checkpoint(weights)["config"]["model"]["num_classes"])  # top 100 of queries x classes
    image = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)).save(image)
    assert cli.main(["predict", str(image), "--weights", weights, "--threshold", "0", "--output_dir",
                     str(tmp_path / "pred")]) == 0
    assert len(json.loads((tmp_path / "pred" / "detections.json").read_text())) == pairs

    assert cli.main(["explain", str(image), "--weights", weights, "--threshold", "0.0", "--output_dir",
                     str(tmp_path / "att")]) == 0
    assert len(list((tmp_path / "att").glob("object_*.png"))) == pairs
    maps = explain(Detector.from_pretrained(weights, threshold=0.0), str(image))
    assert torch.allclose(maps.decoder.flatten(1).sum(1), torch.ones(len(maps.decoder)), atol=1e-5)  # softmax rows

    onnx_file = tmp_path / "cond.onnx"
    assert cli.main(["export", "--weights", weights, "--output", str(onnx_file), "--format", "onnx"]) == 0
    model = Detector.from_pretrained(weights).model
    for size in [(64, 96), (80, 72)]:
        x = torch.randn(2, 3, *size)
        logits, boxes = onnx_outputs(onnx_file, x)
        with torch.no_grad():
            expected = model(x)
        assert (logits - expected["pred_logits"]).abs().max() <= 1e-4
        assert (boxes - expected["pred_boxes"]).abs().max() <= 1e-4


def test_groups_train_and_denoising_is_refused(data, tmp_path):
    """--num_groups applies (Group DETR on Conditional DETR, groups decoded apart); --dn_number is refused."""
    from detr.training.train import train

    out = tmp_path / "groups"
    train(config(data, out, [*SMALL, "--epochs", "1", "--num_groups", "2"]), progress=False)
    assert "group_query_embed.weight" in load_checkpoint(out / "checkpoint.pth")["model"]
    with pytest.raises(ValueError, match="--dn_number 2: denoising queries do not apply to Conditional DETR"):
        train(config(data, tmp_path / "dn", [*SMALL, "--epochs", "1", "--dn_number", "2"]), progress=False)
    with pytest.raises(ValueError, match="--pre_norm: Conditional DETR's decoder is post-norm only"):
        train(config(data, tmp_path / "pn", [*SMALL, "--epochs", "1", "--pre_norm"]), progress=False)


def test_cli_train_accepts_the_model_name(data, tmp_path):
    out = tmp_path / "cli"
    from ..helpers.train import TINY_FLAGS

    assert cli.main(["train", *TINY_FLAGS, *data_flags(data), *SMALL, "--epochs", "1", "--output_dir", str(out)]) == 0
    assert load_checkpoint(out / "checkpoint.pth")["config"]["model"]["family"] == "conditional_detr"


def test_convergence_benchmark_has_conditional_rows_that_build():
    """benchmarks/convergence.py: the Conditional DETR recipes make valid configs of the conditional family."""
    import importlib.util
    from pathlib import Path

    from detr.config import config_from_flags

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "convergence.py"
    spec = importlib.util.spec_from_file_location("convergence_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    names = [r for r in bench.RECIPES if r.startswith("conditional")]
    assert names == ["conditional", "conditional_groups", "conditional_varifocal", "conditional_groups_warmup",
                     "conditional_groups_warmup_ema", "conditional_fast"]
    for name in names:
        cfg = config_from_flags({**bench.SETTINGS, **bench.RECIPES[name], "num_classes": 5})
        model = detr.models.build_model(cfg.model)
        assert isinstance(model, ConditionalDETR) and model.num_groups == bench.RECIPES[name].get("num_groups", 1)


def test_query_groups_of_identical_queries_give_the_single_group_outputs():
    """Group DETR on Conditional DETR, float64: a 3-group model whose groups copy the queries of a 1-group model gives
    the 1-group outputs for every group (groups never see each other, reference points included)."""
    options = dict(backbone="tiny", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
                   num_queries=6, dropout=0.0)
    torch.manual_seed(0)
    single = detr.create_model("conditional_detr_r50", num_classes=5, **options).double().train()
    grouped = detr.create_model("conditional_detr_r50", num_classes=5, num_groups=3, **options).double().train()
    state = single.state_dict()
    state["group_query_embed.weight"] = state["query_embed.weight"].repeat(2, 1)
    grouped.load_state_dict(state)
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(3, 64, 96, generator=g, dtype=torch.float64),
              torch.randn(3, 80, 48, generator=g, dtype=torch.float64)]
    expected, out = single(images), grouped(images)
    assert len(out["groups"]) == 2
    for group in [out, *out["groups"]]:
        for a, b in zip([group, *group["aux_outputs"]], [expected, *expected["aux_outputs"]]):
            assert torch.allclose(a["pred_logits"], b["pred_logits"], rtol=0, atol=1e-12)
            assert torch.allclose(a["pred_boxes"], b["pred_boxes"], rtol=0, atol=1e-12)


def test_an_official_training_checkpoint_with_args_builds_the_dc5_model(tmp_path):
    """The official repository's checkpoint{N}.pth: {"model", "args" (a Namespace), ...}; its args say DC5 and heads."""
    import argparse

    small = dict(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=6)
    torch.manual_seed(0)
    net = detr.create_model("conditional_detr_r50_dc5", num_classes=5, **small).eval()
    args = argparse.Namespace(backbone="resnet50", dilation=True, nheads=2, dropout=0.1, num_queries=6,
                              position_embedding="sine", cls_loss_coef=2.0, focal_alpha=0.25, lr=1e-4)
    path = tmp_path / "checkpoint0049.pth"
    torch.save({"model": net.state_dict(), "args": args, "epoch": 49}, path)
    detector = Detector.from_pretrained(path, threshold=0.0)
    assert isinstance(detector.model, ConditionalDETR)
    assert detector.model.backbone[0].body.layer4[0].conv2.stride == (1, 1)  # dilated
    x = [torch.randn(3, 64, 80)]
    with torch.no_grad():
        assert torch.equal(detector.model(x)["pred_boxes"], net(x)["pred_boxes"])


def test_a_model_name_without_published_weights_says_so():
    from detr.weights.hub import WeightsError

    with pytest.raises(WeightsError, match="conditional_detr_r50: no published weights can be downloaded"):
        Detector.from_pretrained("conditional_detr_r50")
