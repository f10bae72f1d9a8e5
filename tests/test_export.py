"""ONNX export: onnxruntime matches PyTorch (<= 1e-4) at several batch and image sizes."""

from __future__ import annotations

import onnx  # dev dependencies: a missing one fails the run here instead of skipping the file
import onnxruntime  # noqa: F401
import pytest
import torch

import detr
from detr.cli.export import main as export_command
from detr.inference.export import export_onnx, onnx_outputs

from .helpers_predict import one_thread, save_official  # noqa: F401  (autouse fixture)

SMALL = {"backbone": "resnet18", "hidden_dim": 64, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
         "dim_feedforward": 128, "num_queries": 10}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return detr.create_model("detr_r50", **SMALL).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", height=96, width=128)


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (3, 3, 120, 88)], ids=["1x64x96", "3x120x88"])
def test_onnxruntime_matches_pytorch(model, onnx_file, shape):
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    logits, boxes = onnx_outputs(onnx_file, images)
    with torch.no_grad():
        ref = model(images)
    assert logits.shape == (shape[0], SMALL["num_queries"], 92) and boxes.shape == (shape[0], SMALL["num_queries"], 4)
    torch.testing.assert_close(logits, ref["pred_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, ref["pred_boxes"], atol=1e-4, rtol=0)


def test_graph_declares_dynamic_batch_and_size(onnx_file):
    graph = onnx.load(str(onnx_file)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert [i.name for i in graph.input] == ["images"]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in graph.output] == ["pred_logits", "pred_boxes"]


def test_export_leaves_the_model_unchanged(model, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward = type(model.transformer.encoder.layers[0].self_attn).forward
    export_onnx(model, tmp_path / "again.onnx", height=64, width=64)
    assert model.aux_loss is True
    assert model.transformer.encoder.layers[0].self_attn.forward.__func__ is forward
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_command_with_verification(model, tmp_path, capsys):
    weights = save_official(model, tmp_path / "w.pth")
    out = tmp_path / "cli.onnx"
    assert export_command(["--weights", str(weights), "--nheads", "2", "--format", "onnx", "--output", str(out),
                           "--verify"]) == 0
    assert out.is_file() and "max abs difference" in capsys.readouterr().out
    with pytest.raises(ValueError, match="folder .*nowhere does not exist"):
        export_command(["--weights", str(weights), "--nheads", "2", "--output", str(tmp_path / "nowhere" / "m.onnx")])
