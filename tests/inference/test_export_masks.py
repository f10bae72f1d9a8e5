"""ONNX export of a segmentation model: the plain graph also outputs pred_masks, equal to PyTorch's within 1e-4 at
two batch and image sizes; `verify_onnx` checks them; the postprocessing graph is refused with a reason."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

import detr
from detr.cli.export import main as export_command
from detr.inference.export import export_onnx, run_onnx, verify_onnx

from ..helpers.predict import one_thread, save_ours  # noqa: F401  (autouse fixture)
from .test_predict_masks import NAMES, SEGM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return detr.create_model("detr_r50", num_classes=5, masks=True, **SEGM).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "segm.onnx", height=96, width=128)


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 120, 90)], ids=["1x64x96", "2x120x90"])
def test_onnxruntime_masks_match_pytorch(model, onnx_file, shape):
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    got = run_onnx(onnx_file, images)
    with torch.no_grad():
        ref = model(images)
    q, h4, w4 = SEGM["num_queries"], -(-shape[2] // 4), -(-shape[3] // 4)
    assert got["pred_masks"].shape == ref["pred_masks"].shape == (shape[0], q, h4, w4)
    assert ref["pred_masks"].abs().max() > 0.1  # logits that say something
    for ours, theirs in (("logits", "pred_logits"), ("pred_boxes", "pred_boxes"), ("pred_masks", "pred_masks")):
        torch.testing.assert_close(got[ours], ref[theirs], atol=1e-4, rtol=0)


def test_graph_declares_the_masks_output_dynamic(onnx_file):
    graph = onnx.load(str(onnx_file)).graph
    assert [o.name for o in graph.output] == ["logits", "pred_boxes", "pred_masks"]
    dims = [d.dim_param or d.dim_value for d in graph.output[2].type.tensor_type.shape.dim]
    assert [dims[0], *dims[2:]] == ["batch", "mask_height", "mask_width"]  # (queries: fixed, checked by running)


def test_verify_onnx_checks_the_masks(model, onnx_file):
    assert verify_onnx(model, onnx_file) <= 1e-4
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.mask_head.out_lay.bias += 1e-3  # moves pred_masks only
    with pytest.raises(ValueError, match="onnxruntime differs from PyTorch"):
        verify_onnx(changed, onnx_file)


def test_postprocess_graph_is_refused_for_masks(model, tmp_path):
    with pytest.raises(ValueError, match=r"--postprocess\) is not available for a segmentation model.*pred_masks"):
        export_onnx(model, tmp_path / "p.onnx", postprocess=True)


def test_cli_exports_and_verifies_masks(model, tmp_path, capsys):
    weights = save_ours(model, tmp_path / "segm.pth", NAMES, masks=True, num_classes=5, **SEGM)
    out = tmp_path / "segm.onnx"
    assert export_command(["--weights", str(weights), "--output", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "outputs logits, pred_boxes, pred_masks" in printed and "max abs difference" in printed
