"""One routine tells what a checkpoint holds (`detr.weights.identify.config_from_checkpoint`): eval, predict, export and
explain all build the model it says. An official DC5 file is dilated whether the name, the args or a flag says so."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from detr import cli
from detr.checkpoint import load_checkpoint
from detr.evaluation import evaluate as evaluation
from detr.inference.detector import Detector
from detr.weights import identify

from ..helpers.predict import TINY, save_official, save_ours, tiny_model
from ..helpers.train import tiny_data

DC5_FILE = "detr-r50-dc5-f0fb7ef5.pth"  # the published file's name (its hash prefix f0fb7ef5)
R50_ARGS = {"backbone": "resnet50", "nheads": TINY["nheads"], "hidden_dim": TINY["hidden_dim"], "lr_backbone": 1e-5,
            "enc_layers": TINY["enc_layers"], "dec_layers": TINY["dec_layers"], "num_queries": TINY["num_queries"],
            "dim_feedforward": TINY["dim_feedforward"], "dropout": 0.1, "pre_norm": False, "masks": False,
            "position_embedding": "sine", "aux_loss": True, "lr": 1e-4, "batch_size": 1}


def dilated(model: torch.nn.Module) -> bool:
    """Is the last ResNet stage dilated (DC5)? Read from the built convolution, not from any config."""
    return model.backbone[0].body.layer4[0].conv2.stride == (1, 1) and \
        model.backbone[0].body.layer4[1].conv2.dilation == (2, 2)


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """The same R50 weights in three official layouts: the published file name, a training checkpoint with args
    (dilation True), and a plain file that says nothing."""
    folder = tmp_path_factory.mktemp("official")
    model = tiny_model(num_classes=5, backbone="resnet50")
    named = save_official(model, folder / DC5_FILE)
    with_args = save_official(model, folder / "checkpoint0299.pth", args={**R50_ARGS, "dilation": True})
    plain = shutil.copy(named, folder / "plain.pth")
    return {"named": named, "args": with_args, "plain": plain}


@pytest.mark.parametrize("which", ["named", "args"])
def test_detector_builds_dc5_from_the_name_or_the_args(official_files, which, caplog):
    with caplog.at_level(logging.WARNING, logger="detr"):
        detector = Detector.from_pretrained(official_files[which], nheads=TINY["nheads"], size=64, max_size=96)
    assert dilated(detector.model)
    assert "cannot be told" not in caplog.text


def test_plain_official_file_follows_the_flags_and_warns_when_none_says(official_files, caplog):
    with caplog.at_level(logging.WARNING, logger="detr"):
        plain = Detector.from_pretrained(official_files["plain"], nheads=TINY["nheads"])
    assert not dilated(plain.model)
    assert "--dilation" in caplog.text and "plain.pth" in caplog.text  # which flag decides, for which file
    assert dilated(Detector.from_pretrained(official_files["plain"], nheads=TINY["nheads"], dilation=True).model)
    assert dilated(Detector.from_pretrained(official_files["plain"], model="detr_r50_dc5",
                                            nheads=TINY["nheads"]).model)


def test_published_name_gives_coco_names_and_our_checkpoint_its_own(official_files, tmp_path):
    cfg = identify.config_from_checkpoint(load_checkpoint(official_files["named"]), str(official_files["named"]))
    assert cfg.model.dilation and cfg.model.backbone == "resnet50" and cfg.model.num_classes == 5
    assert cfg.data.class_names is None  # 5 classes are not the published model's 91 COCO classes
    ours = save_ours(tiny_model(num_classes=3), tmp_path / "ours.pth", ["a", "b", "c"], dilation=True)
    cfg = identify.config_from_checkpoint(load_checkpoint(ours), str(ours))
    assert cfg.model.dilation and cfg.data.class_names == ["a", "b", "c"] and cfg.model.nheads == TINY["nheads"]


@pytest.mark.parametrize("which, flags", [("named", []), ("args", []), ("plain", ["--dilation"]),
                                          ("plain", ["--model", "detr_r50_dc5"])])
def test_detr_eval_builds_a_dilated_model(official_files, tmp_path, monkeypatch, which, flags):
    data = tiny_data(tmp_path / "data", num_train=1, num_val=2)
    built = []
    real_build = evaluation.build_model
    monkeypatch.setattr(evaluation, "build_model", lambda cfg: built.append(real_build(cfg)) or built[-1])
    code = cli.main(["eval", "--weights", str(official_files[which]), "--nheads", str(TINY["nheads"]), *flags,
                     "--val_images", data["val_images"], "--val_annotations", data["val_annotations"],
                     "--device", "cpu", "--num_workers", "0", "--scales", "64", "--max_size", "96",
                     "--output_dir", str(tmp_path / "eval"), "--quiet"])
    assert code == 0 and len(built) == 1
    assert dilated(built[0])
    assert (tmp_path / "eval" / "eval.json").is_file()


def test_plain_official_file_in_eval_is_not_dilated_without_a_flag(official_files, tmp_path, monkeypatch):
    data = tiny_data(tmp_path / "data", num_train=1, num_val=2)
    built = []
    real_build = evaluation.build_model
    monkeypatch.setattr(evaluation, "build_model", lambda cfg: built.append(real_build(cfg)) or built[-1])
    assert cli.main(["eval", "--weights", str(official_files["plain"]), "--nheads", str(TINY["nheads"]),
                     "--val_images", data["val_images"], "--val_annotations", data["val_annotations"],
                     "--device", "cpu", "--num_workers", "0", "--scales", "64", "--max_size", "96",
                     "--output_dir", str(tmp_path / "eval"), "--quiet"]) == 0
    assert not dilated(built[0])


def test_official_file_that_is_not_detr_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"resnet.pth: not DETR weights: no 'class_embed.weight'"):
        identify.config_from_checkpoint(load_checkpoint(path), str(path))
