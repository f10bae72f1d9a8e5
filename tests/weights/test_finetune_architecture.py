"""Fine-tuning restates nothing: `--weights` of our checkpoint (or a transformers folder, or a published name)
builds that checkpoint's architecture with no architecture flag; flags given explicitly still win."""

from __future__ import annotations

import json

import pytest
import torch

from detr.checkpoint import load_checkpoint
from detr.config import Config
from detr.models.build import build_model
from detr.training.options import config_from_options
from detr.training.train import train
from detr.weights.architecture import architecture_of

from ..helpers.train import tiny_data

# A Conditional DETR on the tiny trunk: another family and other sizes than every default.
SOURCE = {"model": "conditional_detr_r50", "backbone": "tiny", "backbone_weights": "none", "hidden_dim": 48,
          "nheads": 4, "enc_layers": 2, "dec_layers": 1, "dim_feedforward": 96, "num_queries": 12, "dropout": 0.0}
RUN = {"scales": [64], "max_size": 96, "random_crop": False, "device": "cpu", "num_workers": 0, "batch_size": 2,
       "epochs": 1, "lr_drop": 100}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = tiny_data(tmp_path_factory.mktemp("data"))
    return {k: paths[k] for k in ("train_images", "train_annotations", "val_images", "val_annotations")}


@pytest.fixture(scope="module")
def source(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("source")
    train(config_from_options({**SOURCE, **RUN, **data, "output_dir": str(out)}), progress=False)
    return out / "checkpoint.pth"


def test_our_checkpoint_brings_its_architecture(data, source, tmp_path):
    cfg = config_from_options({**RUN, **data, "weights": str(source), "output_dir": str(tmp_path),
                               "lr": 0.0, "lr_backbone": 0.0})
    m = cfg.model
    assert (m.family, m.backbone, m.hidden_dim, m.nheads, m.enc_layers, m.dec_layers, m.dim_feedforward,
            m.num_queries, m.class_loss) == ("conditional_detr", "tiny", 48, 4, 2, 1, 96, 12, "focal")
    assert cfg.train.backbone_weights == "none"
    train(cfg, progress=False)  # no family or shape complaint
    # at rate 0 the fine-tuned model is the source: same architecture, same outputs on the same image
    ckpt, tuned = load_checkpoint(source), load_checkpoint(tmp_path / "checkpoint.pth")
    models = []
    for saved in (ckpt, tuned):
        model = build_model(Config.from_dict(saved["config"]).model).eval()
        model.load_state_dict(saved["model"])
        models.append(model)
    image = torch.rand(3, 64, 80)
    with torch.no_grad():
        a, b = models[0]([image]), models[1]([image])
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_flags_given_win(source, data, tmp_path):
    cfg = config_from_options({**RUN, **data, "weights": str(source), "num_queries": 20, "output_dir": str(tmp_path)})
    assert cfg.model.num_queries == 20 and cfg.model.hidden_dim == 48
    cfg = config_from_options({**RUN, **data, "weights": str(source), "model": "detr_r50",
                               "output_dir": str(tmp_path)})
    assert cfg.model.family == "detr"  # --model names the family explicitly
    with pytest.raises(ValueError, match="holds conditional_detr weights, but a detr model"):
        train(cfg, progress=False)


def test_other_sources(tmp_path):
    assert architecture_of("detr_r101_dc5") == {"backbone": "resnet101", "dilation": True}
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "conditional_detr", "d_model": 64, "encoder_layers": 2, "decoder_layers": 3,
        "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "num_queries": 30, "position_embedding_type": "sine",
        "backbone_config": {"depths": [3, 4, 23, 3]}, "dilation": False}))
    assert architecture_of(folder) == {"family": "conditional_detr", "hidden_dim": 64, "enc_layers": 2,
                                       "dec_layers": 3, "nheads": 4, "dim_feedforward": 128, "num_queries": 30,
                                       "position_embedding": "sine", "class_loss": "focal", "backbone": "resnet101"}
    official = tmp_path / "official.pth"
    torch.save({"model": {"class_embed.weight": torch.zeros(2, 2)}}, official)
    assert architecture_of(official) == {}  # only its shapes tell, when it loads
    assert architecture_of(tmp_path / "missing.pth") == {}
