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
from detr.inference.visualize import PALETTE, draw_detections, label_boxes, overlay_heatmap, plot_logs

from ..helpers.predict import MAX_SIZE, SIZE, one_thread, tiny_model, write_images  # noqa: F401  (autouse fixture)


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


def crowded_scene() -> Detections:
    """Boxes at every corner and edge, past the border, overlapping, identical and nested, on a 320x240 image."""
    boxes = [[0, 0, 60, 40], [260, 0, 320, 40], [0, 200, 60, 240], [260, 200, 320, 240],  # corners
             [130, 0, 190, 30], [130, 215, 190, 240], [0, 100, 40, 140], [280, 100, 320, 140],  # edges
             [-15, -10, 30, 25], [300, 230, 340, 260],  # past the border (predictions may be)
             [100, 80, 200, 160], [105, 85, 205, 165], [100, 80, 200, 160], [120, 100, 150, 120],  # overlapping
             [0, 0, 320, 240]]  # the whole image
    n = len(boxes)
    labels = [i for i in range(n + 1) if i % 12 != 7][:n]  # class colour 7 is white: kept apart from the ink
    names = ["car", "traffic light", "dog", "person", "cell phone", "bus", "cat", "potted plant", "tv", "kite",
             "umbrella", "surfboard", "cup", "fire hydrant", "bicycle"]
    return Detections(torch.tensor(boxes, dtype=torch.float), torch.linspace(0.99, 0.5, n), torch.tensor(labels),
                      names, (240, 320), torch.arange(n))


def test_labels_stay_inside_the_image_and_apart():
    """Every label lies inside the image, no two overlap, each is drawn whole and not crossed by any box."""
    grey = (90, 90, 90)
    image = Image.new("RGB", (320, 240), grey)
    det = crowded_scene()
    places = label_boxes(image, det)
    drawn = np.asarray(draw_detections(image, det)).astype(int)
    assert len(places) == len(det)
    for x0, y0, x1, y1 in places:
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240, (x0, y0, x1, y1)
    for i, a in enumerate(places):  # pairwise: the intervals of two labels are disjoint on x or on y
        for b in places[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    solid = [grey] + [c for c in PALETTE if c != (255, 255, 255)]  # background, outlines and label fills
    text = ~np.any([(drawn == c).all(-1) for c in solid], axis=0)  # [H, W] ink, anti-aliased or not
    inside_labels = np.zeros(text.shape, dtype=bool)
    for (x0, y0, x1, y1), label in zip(places, det.labels.tolist()):
        rgb = PALETTE[label % len(PALETTE)]
        ring = np.concatenate([drawn[y0, x0:x1], drawn[y1 - 1, x0:x1], drawn[y0:y1, x0], drawn[y0:y1, x1 - 1]])
        assert (ring == rgb).all(), "a label's edge is covered by something drawn later"
        assert text[y0:y1, x0:x1].sum() > 20  # its text is there
        inside_labels[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = True
    assert not (text & ~inside_labels).any()  # no text outside a label's padding: none is cut off


def test_a_crowded_image_still_keeps_every_label_inside():
    """More labels than room: they may overlap, but none leaves the image."""
    image = Image.new("RGB", (90, 60))
    det = crowded_scene()
    for x0, y0, x1, y1 in label_boxes(image, det):
        assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 60


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
