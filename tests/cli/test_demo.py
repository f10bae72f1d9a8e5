"""The README's main job, `detr demo`, end to end (one epoch: it must run, evaluate and draw)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from detr import cli


@pytest.mark.slow
def test_demo_trains_evaluates_and_draws(tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--epochs", "1", "--output_dir", str(out), "--num_workers", "0",
                     "--backbone_warmup", "5", "--num_train", "16", "--num_val", "4"]) == 0
    logs = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(logs) == 1 and len(logs[0]["test_coco_eval_bbox"]) == 12
    assert (out / "checkpoint.pth").is_file()
    with Image.open(out / "predictions.png") as picture:
        picture.verify()
        assert picture.format == "PNG" and picture.width > picture.height > 0


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def test_native_bf16_follows_the_cpu_flags():
    from detr.runtime import native_bf16

    expected = bool({"avx512_bf16", "amx_tile"} & _cpu_flags())  # what the kernel says this CPU has
    assert native_bf16(torch.device("cpu")) is expected


class _Stop(Exception):
    pass


@pytest.mark.parametrize("native, argv, amp", [(True, [], "bf16"), (False, [], "none"),
                                               (True, ["--amp", "none"], "none")])
def test_demo_trains_in_bf16_only_where_the_cpu_computes_it(tmp_path, monkeypatch, native, argv, amp):
    import detr.runtime
    import detr.training.train

    seen = {}

    def fake_train(cfg, progress=True):
        seen["amp"] = cfg.train.amp
        raise _Stop

    monkeypatch.setattr(detr.runtime, "native_bf16", lambda device: native)
    monkeypatch.setattr(detr.training.train, "train", fake_train)
    with pytest.raises(_Stop):
        cli.main(["demo", "--output_dir", str(tmp_path), "--num_train", "2", "--num_val", "1", *argv])
    assert seen == {"amp": amp}
