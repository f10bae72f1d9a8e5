"""ONNX export: onnxruntime matches PyTorch (<= 1e-4) at several batch and image sizes, for both graphs
(plain: HF optimum's names; with postprocessing) and both heads (softmax DETR, sigmoid Conditional DETR)."""

from __future__ import annotations

import copy

import onnx  # dev dependencies: a missing one fails the run here instead of skipping the file
import onnxruntime  # noqa: F401
import pytest
import torch

import detr
from detr.cli.export import main as export_command
from detr.inference.export import export_onnx, onnx_outputs, run_onnx, verify_onnx
from detr.registry import COCO_CLASSES

from ..helpers.predict import one_thread, save_official  # noqa: F401  (autouse fixture)

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
    assert [i.name for i in graph.input] == ["pixel_values"]  # HF optimum's names for DETR
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in graph.output] == ["logits", "pred_boxes"]


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


def test_export_command_with_postprocessing(model, tmp_path, capsys):
    weights = save_official(model, tmp_path / "w.pth")
    post = tmp_path / "post.onnx"
    assert export_command(["--weights", str(weights), "--nheads", "2", "--output", str(post), "--postprocess",
                           "--top_k", "4", "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "outputs boxes, scores, labels [B, 4]" in printed and "max abs difference" in printed
    assert [o.name for o in onnx.load(str(post)).graph.output] == ["boxes", "scores", "labels"]
    with pytest.raises(ValueError, match="--top_k applies with --postprocess only"):
        export_command(["--weights", str(weights), "--output", str(post), "--top_k", "4"])


# Tiny models of both heads: the softmax head of the paper's DETR, the sigmoid (focal) head of Conditional DETR.
TINY = {"backbone": "tiny", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 64,
        "num_queries": 12, "num_classes": 5}
FAMILIES = {"detr": "detr_r50", "conditional": "conditional_detr_r50"}
SHAPES = [(1, 3, 64, 96), (3, 3, 120, 88)]
ORIG = torch.tensor([[480, 640], [600, 400], [77, 1333]])  # (height, width) of made-up original images


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(model, plain graph, postprocessing graph, postprocessing graph with top_k=5) of one family."""
    torch.manual_seed(0)
    net = detr.create_model(FAMILIES[request.param], **TINY).eval()
    with torch.no_grad():
        net.class_embed.bias.normal_(0, 2)  # classes of different strength, as in a trained model
    folder = tmp_path_factory.mktemp(request.param)
    return (net, export_onnx(net, folder / "plain.onnx", height=64, width=96),
            export_onnx(net, folder / "post.onnx", height=64, width=96, postprocess=True),
            export_onnx(net, folder / "top5.onnx", height=96, width=64, postprocess=True, top_k=5))


def expected_detections(logits, boxes, sizes, sigmoid: bool, k: int):
    """The postprocessing written out independently: best-first (scores, labels, xyxy pixel boxes)."""
    cx, cy, w, h = boxes.unbind(-1)  # [B, Q] each, relative to the image
    height, width = sizes[:, :1].float(), sizes[:, 1:].float()  # [B, 1]
    pixels = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height,
                          (cx + w / 2) * width, (cy + h / 2) * height], -1)  # [B, Q, 4] xyxy pixels
    if sigmoid:  # every (query, class) pair is a candidate
        flat = logits.sigmoid().flatten(1)  # [B, Q*C]
        order = flat.argsort(1, descending=True)[:, :k]
        scores, queries, labels = flat.gather(1, order), order // logits.shape[-1], order % logits.shape[-1]
    else:  # one candidate per query: its best class but "no object" (the last column)
        per_query, best = logits.softmax(-1)[..., :-1].max(-1)  # [B, Q]
        queries = per_query.argsort(1, descending=True)[:, :k]
        scores, labels = per_query.gather(1, queries), best.gather(1, queries)
    return scores, labels, pixels.gather(1, queries[..., None].expand(-1, -1, 4))


@pytest.mark.parametrize("shape", SHAPES, ids=["1x64x96", "3x120x88"])
def test_both_graphs_match_pytorch_for_both_heads(family, shape):
    net, plain, post, top5 = family
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    sizes = ORIG[:shape[0]]
    with torch.no_grad():
        ref = net(x)
    logits, boxes = onnx_outputs(plain, x)
    torch.testing.assert_close(logits, ref["pred_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, ref["pred_boxes"], atol=1e-4, rtol=0)

    sigmoid = net.class_loss == "focal"
    ours = detr.postprocess(ref, sizes, net.class_loss)  # the PyTorch postprocessing the graph must match
    for path, k in ((post, 60 if sigmoid else 12), (top5, 5)):  # default K: 100 capped at Q x C = 60; Q = 12
        got = run_onnx(path, x, sizes)
        scores, labels, pixels = expected_detections(ref["pred_logits"], ref["pred_boxes"], sizes, sigmoid, k)
        assert got["boxes"].shape == (shape[0], k, 4) and got["labels"].dtype == torch.int64
        assert float((scores[:, :-1] - scores[:, 1:]).min()) > 1e-6  # no ties: the exact label check is meaningful
        assert torch.equal(got["labels"], labels)
        torch.testing.assert_close(got["scores"], scores, atol=1e-4, rtol=0)
        relative = (got["boxes"] - pixels) / sizes.flip(-1).repeat(1, 2)[:, None]  # error as a fraction of the image
        assert float(relative.abs().max()) <= 1e-4
        for image, found in enumerate(ours):  # the same detections as detr.postprocess, ranked by score
            rank = found["scores"].argsort(descending=True)[:k]
            assert torch.equal(got["labels"][image], found["labels"][rank])
            torch.testing.assert_close(got["boxes"][image], found["boxes"][rank], atol=1e-4, rtol=1e-6)


def test_postprocessing_graph_layout(family):
    net, _, post, _ = family
    graph = onnx.load(str(post)).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}
    k = 60 if net.class_loss == "focal" else 12
    assert [i.name for i in graph.input] == ["pixel_values", "orig_target_sizes"]
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels"]
    assert dims == {"pixel_values": ["batch", 3, "height", "width"], "orig_target_sizes": ["batch", 2],
                    "boxes": ["batch", k, 4], "scores": ["batch", k], "labels": ["batch", k]}
    with pytest.raises(ValueError, match="orig_target_sizes: .*postprocessing graph"):
        run_onnx(post, torch.zeros(1, 3, 64, 64))


def test_bad_export_options_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        export_onnx(model, tmp_path / "m.onnx", postprocess=True, top_k=0)
    with pytest.raises(ValueError, match="top_k applies to the postprocessing graph only"):
        export_onnx(model, tmp_path / "m.onnx", top_k=5)


def test_verify_checks_the_graph_it_is_given(family):
    """verify_onnx passes for the model a graph was exported from and fails for another model."""
    net, plain, post, _ = family
    assert verify_onnx(net, plain, sizes=((64, 96),)) <= 1e-4 and verify_onnx(net, post, sizes=((64, 96),)) <= 1e-4
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.input_proj.weight.mul_(1.01)  # a 1% change in one layer
    for path in (plain, post):
        with pytest.raises(ValueError, match="differ"):
            verify_onnx(other, path, sizes=((64, 96),))


def test_verify_forgives_label_swaps_only_between_tied_scores():
    from detr.inference.export import _compare_detections

    scores = torch.tensor([[0.9, 0.5, 0.5 - 1e-7, 0.2]])  # the middle two are tied within 1e-4
    labels, boxes, sizes = torch.tensor([[1, 2, 3, 4]]), torch.rand(1, 4, 4) * 100, torch.tensor([[100, 100]])
    swapped = {"scores": scores, "labels": torch.tensor([[1, 3, 2, 4]]), "boxes": boxes[:, [0, 2, 1, 3]]}
    assert _compare_detections(swapped, scores, labels, boxes, sizes, 1e-4) == (0.0, 0)
    wrong = {"scores": scores, "labels": torch.tensor([[4, 2, 3, 1]]), "boxes": boxes}
    assert _compare_detections(wrong, scores, labels, boxes, sizes, 1e-4)[1] == 2


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 120, 88)], ids=["1x64x96", "2x120x88"])
def test_box_rpb_model_keeps_parity(shape, tmp_path):
    """Plain DETR's BoxRPB (a bias computed from each layer's boxes) exports within the same tolerance."""
    torch.manual_seed(0)
    net = detr.create_model("detr_r50", **{**SMALL, "dec_layers": 2}, box_rpb=True).eval()
    path = export_onnx(net, tmp_path / "rpb.onnx", height=96, width=128)
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    logits, boxes = onnx_outputs(path, images)
    with torch.no_grad():
        ref = net(images)
    torch.testing.assert_close(logits, ref["pred_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, ref["pred_boxes"], atol=1e-4, rtol=0)


def test_metadata_and_openvino_postprocessing_from_the_command(model, tmp_path, capsys):
    """The ONNX file carries the JSON Detector reads; --format openvino --postprocess --verify writes an IR."""
    import json

    weights = save_official(model, tmp_path / "w.pth")
    out = tmp_path / "m.onnx"
    assert export_command(["--weights", str(weights), "--nheads", "2", "--val_scale", "96", "--output", str(out)]) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props["detr"])
    assert meta == {"class_loss": "softmax", "num_classes": 91, "num_queries": 10, "masks": False,
                    "class_names": list(COCO_CLASSES), "size": 96, "max_size": 1333, "graph": "plain", "category_ids": None}
    ir = tmp_path / "post.xml"
    assert export_command(["--weights", str(weights), "--nheads", "2", "--format", "openvino", "--output", str(ir),
                           "--postprocess", "--top_k", "4", "--verify"]) == 0
    assert "OpenVINO vs PyTorch max abs difference" in capsys.readouterr().out
    assert ir.is_file() and ir.with_suffix(".bin").is_file()
    with pytest.raises(ValueError, match="an OpenVINO IR is a .xml file"):
        export_command(["--weights", str(weights), "--format", "openvino", "--output", str(tmp_path / "m.onnx")])
