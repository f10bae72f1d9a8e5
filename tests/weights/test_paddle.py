"""PaddleDetection `.pdparams` -> ours: read safely without paddle, converted, and aligned with PaddleDetection.

The reference tests install paddlepaddle 3.3.1 + paddledet 2.6.0 apart (tests/helpers/paddle_reference.py) and run
PaddleDetection's own DETR in a subprocess (tests/helpers/paddle_worker.py): random weights with every BatchNorm and
LayerNorm moved off identity, written by `paddle.save`, and its eval outputs on one 128x160 image (batch 1).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import detr
from detr.checkpoint import CheckpointError
from detr.cli import main as cli_main
from detr.models.build import build_model
from detr.weights.from_paddle import coco_category_ids, read_pdparams
from detr.weights.loading import load_pretrained

from ..helpers import paddle_reference

# Our 92 logits (91 COCO ids + "no object") in the order of PaddleDetection's 81 (80 classes + background).
PADDLE_ORDER = [*coco_category_ids(), 91]


# R50 is saved with pickle protocol 4 (paddle.save's default), R101 with 2 (bytes as `_codecs.encode`).
PROTOCOL = {50: 4, 101: 2}


@pytest.fixture(scope="module")
def paddle_outputs(tmp_path_factory):
    """depth -> folder with PaddleDetection's detr.pdparams, reference.npz, sliced.pdparams, sliced.npz (each
    depth run once per module)."""
    done: dict[int, Path] = {}

    def get(depth: int) -> Path:
        if depth not in done:
            out = tmp_path_factory.mktemp(f"paddle-r{depth}")
            done[depth] = paddle_reference.run_worker(out, depth=depth, protocol=PROTOCOL[depth])
        return done[depth]

    return get


@pytest.fixture(params=[50, 101], ids=["r50", "r101"])
def paddle_run(request, paddle_outputs) -> tuple[int, Path]:
    return request.param, paddle_outputs(request.param)


@pytest.fixture(scope="module")
def converted_models():
    """folder -> (our model, its ModelConfig) from its detr.pdparams (read and converted once per module)."""
    done: dict[Path, tuple[torch.nn.Module, detr.ModelConfig]] = {}

    def get(out: Path) -> tuple[torch.nn.Module, detr.ModelConfig]:
        if out not in done:
            state, model_cfg = detr.convert_paddle_state_dict(read_pdparams(out / "detr.pdparams"))
            model = build_model(model_cfg).eval()
            model.load_state_dict(state)  # strict
            done[out] = model, model_cfg
        return done[out]

    return get


@pytest.mark.slow
@pytest.mark.reference
def test_converted_weights_give_paddledetection_outputs(paddle_run, converted_models):
    depth, out = paddle_run
    ref = np.load(out / "reference.npz")
    model, model_cfg = converted_models(out)
    assert (model_cfg.backbone, model_cfg.num_classes, model_cfg.num_queries) == (f"resnet{depth}", 91, 100)
    assert (model_cfg.enc_layers, model_cfg.dec_layers, model_cfg.pre_norm, model_cfg.dilation) == (6, 6, False, False)
    with torch.no_grad():
        got = model([torch.from_numpy(ref["image"])])
    logits, boxes = got["pred_logits"][0], got["pred_boxes"][0]  # [100, 92], [100, 4]
    assert (logits[:, PADDLE_ORDER] - torch.from_numpy(ref["logits"][0])).abs().max() <= 1e-4
    assert (boxes - torch.from_numpy(ref["boxes"][0])).abs().max() <= 1e-5
    assert logits.softmax(-1)[:, [i for i in range(92) if i not in PADDLE_ORDER]].max() == 0  # unused COCO ids

    # PaddleDetection's DETRBBoxPostProcess rows [label, score, x1, y1, x2, y2]; with 100 queries it keeps them
    # all, in query order. Ours labels by COCO id, PaddleDetection by contiguous index.
    size = ref["original_size"]
    result = detr.postprocess(got, [size.tolist()])[0]
    rows = torch.from_numpy(ref["post"])
    assert result["labels"].tolist() == [coco_category_ids()[int(i)] for i in rows[:, 0]]
    assert (result["scores"] - rows[:, 1]).abs().max() <= 1e-5
    assert (result["boxes"] - rows[:, 2:]).abs().max() <= 1e-5 * size.max()


@pytest.mark.slow
@pytest.mark.reference
def test_unmasked_padded_batch_gives_paddledetection_batch_outputs(paddle_outputs, converted_models):
    """PaddleDetection's eval passes no padding mask: at batch > 1 the padding is attended to and positions
    span the padded canvas (the official code and a list of images given to ours mask it). A padded [B, 3, H, W]
    tensor given to our model without a mask is computed the same way.

    R50 only: on the random R101 the padded second image is ill-conditioned, both float32 implementations are
    up to 9e-5 (ours) and 6e-5 (PaddleDetection) from our float64 logits, and 1.3e-4 from each other."""
    out = paddle_outputs(50)
    ref = np.load(out / "reference.npz")
    model, _ = converted_models(out)
    with torch.no_grad():
        got = model(torch.from_numpy(ref["batch"]))  # [2, 3, H, W], no mask
    assert (got["pred_logits"][..., PADDLE_ORDER] - torch.from_numpy(ref["batch_logits"])).abs().max() <= 1e-4
    assert (got["pred_boxes"] - torch.from_numpy(ref["batch_boxes"])).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.reference
def test_sliced_big_parameters_read_as_paddle_load_does(paddle_run):
    """paddle's layout for parameters over 1 GiB (slices `name@@.i`), joined back as `paddle.load` joins them."""
    _, out = paddle_run
    expected = np.load(out / "sliced.npz")
    got = read_pdparams(out / "sliced.pdparams")
    assert sorted(got) == sorted(expected.files)
    for key in expected.files:
        np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.slow
@pytest.mark.reference
def test_cli_convert_writes_a_checkpoint_the_detector_loads(paddle_outputs, tmp_path):
    out = paddle_outputs(50)
    target = tmp_path / "paddle_r50.pth"
    assert cli_main(["convert", "--from", "paddle", str(out / "detr.pdparams"), "--output", str(target)]) == 0
    detector = detr.Detector.from_pretrained(target, threshold=0.0, size=128, max_size=160)
    assert detector.class_names[1] == "person" and len(detector.class_names) == 91
    image = np.random.default_rng(0).integers(0, 255, (128, 160, 3), dtype=np.uint8)
    found = detector(image)
    assert len(found.scores) == 100 and set(found.names) <= set(detr.registry.COCO_CLASSES) - {"N/A"}


def _pdparams(path: Path, extra: dict | None = None, protocol: int = 4) -> Path:
    """A file laid out as `paddle.save(state_dict)` writes it (arrays + name table), plus `extra` entries."""
    state = {"detr_head.score_head.bias": np.arange(81, dtype=np.float32),
             "StructuredToParameterName@@": {"detr_head.score_head.bias": "linear_0.b_0"}, **(extra or {})}
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=protocol)
    return path


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious file would make an unrestricted unpickler run."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["os.system", "exec"])
def test_crafted_pdparams_is_refused_and_never_runs(tmp_path, kind, protocol):
    marker = tmp_path / "ran"
    payload = (_Payload(os.system, f"touch {marker}") if kind == "os.system"
               else _Payload(exec, f"open({str(marker)!r}, 'w').close()"))
    path = _pdparams(tmp_path / "evil.pdparams", {"transformer.query_pos_embed.weight": payload}, protocol)
    # the payload is live: plain pickle (what an unrestricted reader does) runs it
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(path)],
                   check=True)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"evil\.pdparams: refused to load") as info:
        read_pdparams(path)
    assert ("system" if kind == "os.system" else "exec") in str(info.value)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    path = _pdparams(tmp_path / "objects.pdparams", {"x": np.array([1, "a"], dtype=object)})
    with pytest.raises(CheckpointError, match=r"objects\.pdparams: refused to load: .*dtype"):
        read_pdparams(path)


def test_truncated_empty_and_foreign_files_name_the_file(tmp_path):
    whole = _pdparams(tmp_path / "whole.pdparams", {"w": np.ones((64, 64), np.float32)}).read_bytes()
    (tmp_path / "cut.pdparams").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pdparams: not a readable \.pdparams file \(truncated"):
        read_pdparams(tmp_path / "cut.pdparams")
    (tmp_path / "empty.pdparams").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pdparams: .*empty file"):
        read_pdparams(tmp_path / "empty.pdparams")
    torch.save({"w": torch.ones(2)}, tmp_path / "torch.pdparams")
    with pytest.raises(CheckpointError, match=r"torch\.pdparams: .*zip archive"):
        read_pdparams(tmp_path / "torch.pdparams")
    with pytest.raises(CheckpointError, match=r"missing\.pdparams: .*not found"):
        read_pdparams(tmp_path / "missing.pdparams")
    sliced = {"UnpackBigParamInfor@@": {"w": {"OriginShape": (2, 2), "slices": ["w@@.0", "w@@.1"]}},
              "w@@.0": np.ones(2, np.float32)}
    with pytest.raises(CheckpointError, match=r"sliced\.pdparams: big parameter 'w': slices \['w@@\.1'\]"):
        read_pdparams(_pdparams(tmp_path / "sliced.pdparams", sliced))


def test_variants_the_model_cannot_express_are_refused():
    with pytest.raises(ValueError, match=r"'backbone\.conv1\.conv1_1\.conv\.weight' belongs to a ResNet-vd"):
        detr.convert_paddle_state_dict({"backbone.conv1.conv1_1.conv.weight": np.zeros((32, 3, 3, 3))})
    with pytest.raises(ValueError, match=r"'neck\.x' is not a parameter of PaddleDetection's DETR"):
        detr.convert_paddle_state_dict({"neck.x": np.zeros(3)})


def test_cli_convert_needs_an_output(tmp_path, capsys):
    path = _pdparams(tmp_path / "x.pdparams")
    assert cli_main(["convert", "--from", "paddle", str(path)]) == 2
    assert "--output" in capsys.readouterr().err


# --- files written in PaddleDetection's layout from one of our models (no paddle needed) ----------------------

_PADDLE_BN = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}
_PADDLE_LINEAR = re.compile(r"(attn\.in_proj_weight|out_proj\.weight|linear[12]\.weight|class_embed\.weight"
                            r"|bbox_embed\.layers\.\d+\.weight)$")


def _paddle_name(key: str) -> str:
    """Our (official) name -> PaddleDetection's (ppdet's ResNet `res{stage}{letter}.branch2{a,b,c}` / `short`,
    DETRTransformer, DETRHead), written out by hand from PaddleDetection's module names."""
    if key.startswith("backbone.0.body.conv1."):
        return "backbone.conv1.conv1.conv.weight"
    if m := re.match(r"backbone\.0\.body\.bn1\.(\w+)$", key):
        return f"backbone.conv1.conv1.norm.{_PADDLE_BN[m[1]]}"
    if m := re.match(r"backbone\.0\.body\.layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(\w+)$", key):
        stage, block = int(m[1]) + 1, f"res{int(m[1]) + 1}{chr(ord('a') + int(m[2]))}"
        branch = "short" if m[3] == "downsample." else "branch2" + "abc"[int(m[4]) - 1]
        conv = m[3] == "conv" or (m[3] == "downsample." and m[4] == "0")
        return f"backbone.res{stage}.{block}.{branch}." + ("conv.weight" if conv else f"norm.{_PADDLE_BN[m[5]]}")
    for ours, theirs in (("input_proj.", "transformer.input_proj."), ("query_embed.", "transformer.query_pos_embed."),
                         ("class_embed.", "detr_head.score_head."), ("bbox_embed.", "detr_head.bbox_head.")):
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key.replace(".multihead_attn.", ".cross_attn.")  # the rest of transformer.* keeps its names


def _write_paddle_file(model: torch.nn.Module, path: Path, extra: dict | None = None) -> Path:
    """`model`'s weights as `paddle.save(state_dict)` writes a PaddleDetection DETR: its names, Linear weights
    as [in, out], float32 arrays and the name table."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        array = value.detach().numpy().astype(np.float32)
        state[_paddle_name(key)] = array.T.copy() if _PADDLE_LINEAR.search(key) else array
    state.update(extra or {})
    state["StructuredToParameterName@@"] = {k: f"param_{i}" for i, k in enumerate(state)}
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)
    return path


def _random_model(backbone: str, nheads: int) -> torch.nn.Module:
    """A small DETR of 80 classes (PaddleDetection's COCO head) with every weight and norm statistic random."""
    torch.manual_seed(0)
    model = detr.create_model("detr_r50", num_classes=80, backbone=backbone, hidden_dim=32, nheads=nheads,
                              enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=5).eval()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                noise = torch.randn_like(value) * 0.1
                value.copy_(value.abs() + 0.5 + noise.abs() if key.endswith("running_var") else value + noise)
    return model


def test_cli_converts_a_4_head_model_with_its_flag_and_says_what_it_assumes(tmp_path, caplog):
    model = _random_model("resnet50", nheads=4)
    path = _write_paddle_file(model, tmp_path / "detr_4heads.pdparams")
    image = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(image)  # [1, 5, 81] in PaddleDetection's class order, [1, 5, 4]

    def converted(argv: list[str], name: str) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        assert cli_main(["convert", "--from", "paddle", str(path), "--output", str(out), *argv]) == 0
        net, _ = load_pretrained(out)
        with torch.no_grad():
            return net(image)

    with caplog.at_level(logging.INFO, logger="detr"):
        got = converted(["--nheads", "4"], "four.pth")
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    assert (got["pred_logits"][..., PADDLE_ORDER] - expected["pred_logits"]).abs().max() <= 1e-5
    assert (got["pred_boxes"] - expected["pred_boxes"]).abs().max() <= 1e-6

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detr"):
        default = converted([], "default.pth")  # 8 heads assumed: another model, and the log says so
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "detr_4heads.pdparams" in warning and "assuming 8" in warning and "--nheads" in warning
    assert (default["pred_logits"][..., PADDLE_ORDER] - expected["pred_logits"]).abs().max() > 1e-3


@pytest.mark.parametrize("depth", [18, 34])
def test_resnet18_34_with_a_first_block_shortcut_is_refused_before_writing(tmp_path, capsys, depth):
    model = _random_model(f"resnet{depth}", nheads=4)
    short = {"backbone.res2.res2a.short.conv.weight": np.ones((64, 64, 1, 1), np.float32),
             **{f"backbone.res2.res2a.short.norm.{p}": np.ones(64, np.float32)
                for p in ("weight", "bias", "_mean", "_variance")}}
    path = _write_paddle_file(model, tmp_path / f"detr_r{depth}.pdparams", short)
    out = tmp_path / "out.pth"
    assert cli_main(["convert", "--from", "paddle", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"detr_r{depth}.pdparams" in err and "res2a.short" in err and "ResNet-18/34" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def test_loading_a_pdparams_file_directly_says_to_convert_it(tmp_path):
    path = _pdparams(tmp_path / "x.pdparams")
    with pytest.raises(CheckpointError, match=r"x\.pdparams: .*detr convert --from paddle .*--nheads N"):
        load_pretrained(path)
