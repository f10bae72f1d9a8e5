"""OpenVINO export: the IR matches PyTorch (<= 1e-4) at two image sizes for both graphs, Detector runs exported
.onnx and .xml files with the same detections as the .pth, and a missing openvino names its extra."""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import warnings

import openvino  # dev dependency: a missing one fails the run here instead of skipping the file
import pytest
import torch

import detr
from detr.cli.export import main as export_command
from detr.inference.export import export_onnx, export_openvino, verify_export
from detr.inference.runtimes import OpenVINORuntime

from ..helpers.predict import MAX_SIZE, SIZE, one_thread, save_ours, tiny_model, write_images  # noqa: F401
from .test_export import expected_detections

SHAPES = [(1, 3, 64, 96), (2, 3, 120, 88)]
ORIG = torch.tensor([[480, 640], [600, 400]])  # (height, width) of made-up original images
NAMES = ["cat", "dog", "bird"]
FAST = {"backbone": "tiny"}  # the from-scratch trunk: the graphs export and compile several times faster


@pytest.fixture(scope="module")
def model():
    net = tiny_model(num_classes=len(NAMES), **FAST)
    with torch.no_grad():  # queries made to differ: untied scores, so the label order is well defined
        net.class_embed.weight.mul_(5.0)
        net.query_embed.weight.mul_(5.0)
    return net


@pytest.fixture(scope="module")
def irs(model, tmp_path_factory):
    """(plain IR, postprocessing IR) of the tiny model."""
    folder = tmp_path_factory.mktemp("ir")
    return (export_openvino(model, folder / "plain.xml", height=64, width=96),
            export_openvino(model, folder / "post.xml", height=64, width=96, postprocess=True))


def test_ir_is_fp32_with_dynamic_batch_and_size(irs):
    net = openvino.Core().read_model(str(irs[0]))
    shape = net.input("pixel_values").get_partial_shape()
    assert [d.is_dynamic for d in shape] == [True, False, True, True]
    assert [o.get_any_name() for o in net.outputs] == ["logits", "pred_boxes"]
    weights = {op.get_output_element_type(0).get_type_name() for op in net.get_ops() if op.get_type_name() == "Constant"}
    assert "f16" not in weights  # OpenVINO's default fp16 compression would cost parity


@pytest.mark.parametrize("shape", SHAPES, ids=["1x64x96", "2x120x88"])
def test_openvino_matches_pytorch_for_both_graphs(model, irs, shape):
    plain, post = irs
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    sizes = ORIG[:shape[0]]
    with torch.no_grad():
        ref = model(x)
    got = OpenVINORuntime(plain).run(x)
    assert got["logits"].shape == ref["pred_logits"].shape
    torch.testing.assert_close(got["logits"], ref["pred_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["pred_boxes"], ref["pred_boxes"], atol=1e-4, rtol=0)

    got = OpenVINORuntime(post).run(x, sizes)
    scores, labels, pixels = expected_detections(ref["pred_logits"], ref["pred_boxes"], sizes, False, 10)
    assert float((scores[:, :-1] - scores[:, 1:]).min()) > 1e-6  # no ties: the exact label check is meaningful
    assert torch.equal(got["labels"], labels)
    torch.testing.assert_close(got["scores"], scores, atol=1e-4, rtol=0)
    relative = (got["boxes"] - pixels) / sizes.flip(-1).repeat(1, 2)[:, None]  # error as a fraction of the image
    assert float(relative.abs().max()) <= 1e-4


def test_verify_fails_for_another_model(model, irs):
    assert verify_export(model, irs[0], sizes=((64, 96),)) <= 1e-4
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.input_proj.weight.mul_(1.01)
    with pytest.raises(ValueError, match="openvino differs from PyTorch"):
        verify_export(other, irs[0], sizes=((64, 96),))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """A checkpoint with class names, and its .onnx and .xml written by `detr export`."""
    folder = tmp_path_factory.mktemp("files")
    ckpt = save_ours(model, folder / "model.pth", NAMES, num_classes=len(NAMES), **FAST)
    files = {"onnx": folder / "model.onnx", "openvino": folder / "model.xml"}
    for fmt, path in files.items():
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert export_command(["--weights", str(ckpt), "--val_scale", str(SIZE), "--max_size", str(MAX_SIZE),
                                   "--format", fmt, "--output", str(path), "--verify"]) == 0
        runtime = "OpenVINO" if fmt == "openvino" else "onnxruntime"
        assert f"{runtime} vs PyTorch max abs difference" in printed.getvalue()
    return ckpt, files


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_detector_on_exported_file_equals_pytorch(exported, tmp_path, fmt):
    ckpt, files = exported
    images = list(write_images(tmp_path).values())
    torch_detector = detr.Detector.from_pretrained(ckpt, threshold=0.5, size=SIZE, max_size=MAX_SIZE)
    file_detector = detr.Detector.from_pretrained(files[fmt], threshold=0.5)  # names and sizes from metadata
    assert (file_detector.size, file_detector.max_size, file_detector.class_names) == (SIZE, MAX_SIZE, NAMES)
    expected = torch_detector(images)  # one at a time: what each image gives alone
    for got in (file_detector(images), file_detector(images, batch_size=3)):  # padded batches too
        assert sum(len(d) for d in got) > 0
        for g, e in zip(got, expected):
            assert torch.equal(g.labels, e.labels) and g.names == e.names and g.image_size == e.image_size
            assert set(g.names) <= set(NAMES)
            torch.testing.assert_close(g.boxes, e.boxes, atol=1e-3, rtol=0)
            torch.testing.assert_close(g.scores, e.scores, atol=1e-4, rtol=0)


def test_backend_argument_and_refusals(model, exported, tmp_path):
    ckpt, files = exported
    on_ov = detr.Detector.from_pretrained(files["onnx"], backend="openvino")  # OpenVINO reads .onnx too
    assert type(on_ov.runtime).__name__ == "OpenVINORuntime" and on_ov.class_names == NAMES
    with pytest.raises(ValueError, match="onnxruntime runs .onnx files only"):
        detr.Detector.from_pretrained(files["openvino"], backend="onnxruntime")
    with pytest.raises(ValueError, match="backend: expected one of onnxruntime, openvino"):
        detr.Detector.from_pretrained(files["onnx"], backend="tensorrt")
    with pytest.raises(ValueError, match="not under amp; got amp='bf16'"):
        detr.Detector.from_pretrained(files["onnx"], amp="bf16")
    post = export_onnx(model, tmp_path / "post.onnx", height=64, width=64, postprocess=True)
    with pytest.raises(ValueError, match="postprocessing graph .*export without --postprocess"):
        detr.Detector.from_pretrained(post)
    bare = tmp_path / "bare.onnx"  # a graph written without our metadata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(torch.nn.Conv2d(3, 3, 1), (torch.zeros(1, 3, 8, 8),), str(bare), dynamo=False,
                          input_names=["pixel_values"])
    with pytest.raises(ValueError, match="bare.onnx: no 'class_loss' in its detr metadata"):
        detr.Detector.from_pretrained(bare)
    with pytest.raises(ValueError, match="an exported file; export from the PyTorch weights"):
        export_command(["--weights", str(files["onnx"]), "--output", str(tmp_path / "again.onnx")])


def test_missing_openvino_names_the_extra(model, exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'detr-aligned\[openvino\]'"):
        export_openvino(model, tmp_path / "m.xml")
    with pytest.raises(ImportError, match=r"detr-aligned\[openvino\]"):
        export_command(["--weights", str(exported[0]), "--format", "openvino", "--output", str(tmp_path / "m.xml")])
    with pytest.raises(ImportError, match=r"detr-aligned\[openvino\]"):
        detr.Detector.from_pretrained(exported[1]["openvino"])
    assert not (tmp_path / "m.xml").exists()


def test_detector_on_exported_segmentation_model(tmp_path):
    """The plain graph of a mask model through Detector: PyTorch's boxes and masks image by image; in a padded
    batch, masks as close to the single-image ones as PyTorch's own padded batch gets (the official
    postprocessing upsamples a batch's masks to the batch's size, so batch and single differ at the edges)."""
    from .test_predict_masks import NAMES as SEGM_NAMES
    from .test_predict_masks import model as segm_model
    from .test_predict_masks import uint8_image

    net = segm_model.__wrapped__()
    path = export_openvino(net, tmp_path / "segm.xml", height=64, width=96, class_names=SEGM_NAMES, size=SIZE,
                           max_size=MAX_SIZE)
    images = [uint8_image(70, 110, 0), uint8_image(120, 64, 1)]
    ours = detr.Detector(net, SEGM_NAMES, threshold=0.5, size=SIZE, max_size=MAX_SIZE)
    expected = ours(images)  # one image at a time
    exported = detr.Detector.from_pretrained(path, threshold=0.5)
    for batch, padded in ((1, None), (2, ours(images, batch_size=2))):
        got = exported(images, batch_size=batch)
        assert sum(len(d) for d in got) > 0
        for i, (g, e) in enumerate(zip(got, expected)):
            assert torch.equal(g.labels, e.labels) and g.names == e.names
            torch.testing.assert_close(g.boxes, e.boxes, atol=1e-3, rtol=0)
            wrong = float((g.masks != e.masks).float().mean())
            if padded is None:
                assert wrong < 1e-3  # a border pixel may flip on float noise
            else:
                assert wrong <= float((padded[i].masks != e.masks).float().mean()) + 1e-3
