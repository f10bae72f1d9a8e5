"""Pictures: boxes drawn where they belong, attention maps checked against torch's own attention, curves."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detr.cli.plot import main as plot_command
from detr.inference.detector import Detections, Detector
from detr.inference.explain import explain
from detr.inference.visualize import draw_detections, overlay_heatmap, plot_logs

from .helpers_predict import MAX_SIZE, SIZE, one_thread, tiny_model, write_images  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def detector():
    return Detector(tiny_model(), threshold=0.5, size=SIZE, max_size=MAX_SIZE)


def test_boxes_are_drawn_on_their_edges_only():
    image = Image.new("RGB", (100, 80), (40, 40, 40))
    det = Detections(torch.tensor([[20.0, 30.0, 70.0, 60.0]]), torch.tensor([0.9]), torch.tensor([3]), ["car"],
                     (80, 100), torch.tensor([0]))
    drawn = np.asarray(draw_detections(image, det)).astype(int)
    changed = np.abs(drawn - 40).sum(-1) > 0
    assert changed[45, 20] and changed[45, 70] and changed[60, 45]  # left, right, bottom edges
    assert not changed[45, 45]  # inside the box
    assert not changed[5, 95] and not changed[75, 5]  # far from the box and its label
    assert changed[25, 25]  # the label sits above the box
    assert image.getpixel((20, 45)) == (40, 40, 40)  # the input is not modified


def test_heatmap_is_hottest_where_the_map_is():
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    heat = np.zeros((3, 4))
    heat[0, 3] = 1.0  # top-right cell
    out = np.asarray(overlay_heatmap(image, heat)).astype(float)
    yellow, purple = out[4, 60], out[44, 4]  # viridis: high = yellow, low = dark purple
    assert yellow[1] > purple[1] + 60 and out.shape == (48, 64, 3)


def test_decoder_and_encoder_maps_match_torch_attention(detector, tmp_path):
    """Recompute both maps with torch.nn.MultiheadAttention from the layers' inputs and weights."""
    path = write_images(tmp_path)["photo.jpg"]
    captured = {}
    model = detector.model
    dec = model.transformer.decoder.layers[-1].multihead_attn
    enc = model.transformer.encoder.layers[-1].self_attn
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: captured.__setitem__(n, a)) for n, m in
             (("dec", dec), ("enc", enc))]
    maps = explain(detector, path, pixel=(30, 70))
    for h in hooks:
        h.remove()
    assert len(maps.detections) > 0
    fh, fw = maps.feature_size
    assert (fh, fw) == (-(-SIZE * 80 // 50 // 32), -(-SIZE // 32))  # 153x96 input, stride 32, rounded up

    def torch_weights(module, args):
        mha = torch.nn.MultiheadAttention(64, 2, batch_first=True)
        mha.load_state_dict({k: v for k, v in module.state_dict().items()})
        with torch.no_grad():
            _, w = mha(args[0], args[1], args[1], key_padding_mask=args[3] if len(args) > 3 else None)
        return w[0]  # head-averaged [L, S]

    dec_w = torch_weights(dec, captured["dec"])[maps.detections.queries]
    torch.testing.assert_close(maps.decoder, dec_w.reshape(-1, fh, fw), atol=1e-5, rtol=1e-4)
    cell = int(70 * fh / 80) * fw + int(30 * fw / 50)
    torch.testing.assert_close(maps.encoder, torch_weights(enc, captured["enc"])[cell].reshape(fh, fw),
                               atol=1e-5, rtol=1e-4)


def write_log(folder, epochs, offset=0.0):
    folder.mkdir()
    with open(folder / "log.txt", "w") as f:
        for e in range(epochs):
            f.write(json.dumps({"epoch": e, "train_loss": 5 - e + offset, "test_loss": 5.5 - e,
                                "train_class_error": 80.0 - 10 * e, "test_class_error": 85.0 - 10 * e,
                                "test_coco_eval_bbox": [0.01 * e] + [0.0] * 11}) + "\n")


def test_plot_several_runs_into_one_png(tmp_path):
    write_log(tmp_path / "a", 4)
    write_log(tmp_path / "b", 2, offset=1.0)
    out = tmp_path / "curves.png"
    assert plot_command([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(out)]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1200, 800)  # 12 x 8 inches at 100 dpi


def test_plot_does_not_touch_global_matplotlib_state(tmp_path):
    import matplotlib

    write_log(tmp_path / "a", 2)
    before, backend = dict(matplotlib.rcParams), matplotlib.get_backend()
    plot_logs([tmp_path / "a"], tmp_path / "c.png")
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend
    code = ("import sys, detr, detr.inference.visualize, detr.cli.plot, detr.inference.explain, detr.inference.export; "
            "assert 'matplotlib' not in sys.modules and 'onnx' not in sys.modules, 'imported at import time'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_plot_bad_logs_are_explained(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.txt").write_text('{"epoch": 0, "train_loss": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"log.txt:2: not a JSON line"):
        plot_logs([tmp_path / "run"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no log.txt found"):
        plot_logs([tmp_path / "nothing"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="does not exist"):
        plot_command([str(tmp_path / "run"), "--output", str(tmp_path / "no" / "x.png")])
