"""One helper for each job, used everywhere: fsynced atomic writes, COCO results rounding, the attention
formula (fused, exact and export paths against a float64 formula written here), no prints and no argparse
below the CLI."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

from detr import checkpoint
from detr.data import make_demo_dataset
from detr.evaluation.coco_eval import to_coco_detections
from detr.inference.detector import Detections
from detr.models.attention import Attention

SRC = Path(__file__).resolve().parents[1] / "src" / "detr"


@pytest.fixture
def fsynced(monkeypatch):
    """The files whose data reached the disk through `os.fsync` before their rename."""
    names: list[str] = []
    real = checkpoint.os.fsync

    def spy(fd):
        names.append(Path(f"/proc/self/fd/{fd}").resolve().name)
        return real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", spy)
    return names


def test_every_writer_fsyncs_then_renames(tmp_path, fsynced):
    checkpoint.write_json(tmp_path / "a.json", {"x": 1})
    checkpoint.write_bytes(tmp_path / "b.bin", b"xyz")
    checkpoint.save_checkpoint(tmp_path / "c.pth", {"model": {"w": torch.ones(1)}})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1} and (tmp_path / "b.bin").read_bytes() == b"xyz"
    assert len(fsynced) == 3 and all(n.startswith(f".{t}.") for n, t in zip(fsynced, ("a.json", "b.bin", "c.pth")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.pth"]  # no temporary file left


def test_demo_data_is_written_atomically(tmp_path, fsynced):
    paths = make_demo_dataset(tmp_path / "demo", num_train=3, num_val=2, image_size=32)
    written = {n.split(".tmp")[0].lstrip(".").rsplit(".", 1)[0] for n in fsynced}
    assert len(fsynced) == 3 + 2 + 2 + 1  # every image, both annotation files, the completion marker
    assert {"instances_train.json", "instances_val.json", "demo.json"} <= written
    assert json.loads(Path(paths["val_annotations"]).read_text())["images"]


def test_predict_and_eval_write_the_same_coco_results():
    """Detections.to_coco (detr predict) and to_coco_detections (detr eval) round alike: 1/100 px, 5 decimals."""
    boxes = torch.tensor([[10.123456, 20.987654, 30.5, 41.0049], [0.0, 0.0, 1e-3, 2.0]])
    scores, labels = torch.tensor([0.1234567, 0.9999999]), torch.tensor([3, 1])
    det = Detections(boxes, scores, labels, ["c", "a"], (50, 60), torch.tensor([0, 1]))
    expected = [{"image_id": 7, "category_id": 3, "bbox": [10.12, 20.99, 20.38, 20.02], "score": 0.12346},
                {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 0.0, 2.0], "score": 1.0}]
    assert det.to_coco(7) == expected
    assert to_coco_detections([{"boxes": boxes, "scores": scores, "labels": labels}], [7]) == expected


def reference_attention(module: Attention, query, key, value, mask) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v per head, then the output projection, in float64."""
    e, h = query.shape[-1], module.num_heads
    w = module.in_proj_weight.double()
    b = module.in_proj_bias.double()
    q, k, v = (x.double() @ w[i * e:(i + 1) * e].T + b[i * e:(i + 1) * e] for i, x in enumerate((query, key, value)))
    split = lambda x: x.unflatten(-1, (h, e // h)).transpose(1, 2)  # noqa: E731  [B, h, N, d]
    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(e // h)
    scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).flatten(2)
    return out @ module.out_proj.weight.double().T + module.out_proj.bias.double()


@pytest.mark.parametrize("path", ["fused", "explicit", "exact"])
def test_every_attention_path_is_the_formula(path):
    torch.manual_seed(0)
    module = Attention(32, 4, dropout=0.0)
    query, key = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    value = torch.randn(2, 7, 32)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True  # padding of the second image
    module.explicit = path == "explicit"
    module.train(path == "exact")  # training with dropout 0 and fused_training off: the exact path
    out = module(query, key, value, mask)
    assert torch.allclose(out.double(), reference_attention(module, query, key, value, mask), atol=1e-5)
    weights = module.attention_weights(query, key, mask)  # head-averaged, for pictures
    assert torch.allclose(weights[1, :, 4:], torch.zeros(5, 3)) and torch.allclose(weights.sum(-1), torch.ones(2, 5))


def _calls(tree: ast.AST, name: str) -> list[int]:
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def test_library_code_logs_and_never_prints_and_only_the_cli_parses_arguments():
    prints, parsers = [], []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "cli":
            continue
        text = path.read_text()
        prints += [f"{path.name}:{n}" for n in _calls(ast.parse(text), "print")]
        if "ArgumentParser(" in text or "parse_args(" in text:
            parsers.append(path.name)
    assert prints == [] and parsers == []
