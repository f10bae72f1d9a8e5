"""`detr.convert_hf_state_dict`: transformers DETR / Conditional DETR weights in every spelling -> our models."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    ResNetConfig,
)

import detr
from detr.models.build import build_model

from ..helpers.hf_conditional import padded, two_images

SMALL = dict(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None, num_queries=7, num_labels=4,
             d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
             encoder_attention_heads=4, decoder_attention_heads=4, dropout=0.0)


def _resnet18() -> ResNetConfig:
    return ResNetConfig(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic",
                        out_features=["stage4"])


def _pair(kind: str, **extra):
    torch.manual_seed(0)
    if kind == "detr":
        config = DetrConfig(backbone_config=_resnet18(), **SMALL, **extra)
        theirs = DetrForObjectDetection(config).eval()
    else:
        config = ConditionalDetrConfig(backbone_config=_resnet18(), **SMALL, **extra)
        theirs = ConditionalDetrForObjectDetection(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from their initial 1 / 0
        for p in theirs.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return theirs, config


@pytest.mark.parametrize("kind, extra", [("detr", {}), ("detr", {"position_embedding_type": "learned"}),
                                         ("conditional_detr", {})])
def test_converted_weights_give_transformers_outputs(kind, extra):
    """Without auxiliary_loss the port's final outputs follow the official formulas (DETR: q/k/v joined)."""
    theirs, config = _pair(kind, **extra)
    state, model_cfg = detr.convert_hf_state_dict(theirs.state_dict(), config)
    assert (model_cfg.family, model_cfg.backbone, model_cfg.nheads, model_cfg.num_classes) == (kind, "resnet18", 4, 4)
    assert model_cfg.position_embedding == extra.get("position_embedding_type", "sine")
    ours = build_model(model_cfg).eval()
    ours.load_state_dict(state)  # strict
    images = two_images()
    with torch.no_grad():
        expected, got = theirs(*padded(images)), ours(images)
    assert (got["pred_logits"] - expected.logits).abs().max() <= 1e-4
    assert (got["pred_boxes"] - expected.pred_boxes).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_hub_file_and_timm_backbone_spellings_give_the_same_weights(kind, tmp_path):
    """save_pretrained's hub layout (`conv_encoder`, `out_proj`, `fc1`, `ca_*`), and a timm backbone (torchvision's
    names under `conv_encoder.model`) convert to what the in-memory 5.x names convert to."""
    theirs, config = _pair(kind)
    state, _ = detr.convert_hf_state_dict(theirs.state_dict(), config)
    theirs.save_pretrained(tmp_path)
    hub = load_file(tmp_path / "model.safetensors")
    assert any(".conv_encoder." in k for k in hub) and any(k.endswith("out_proj.weight") for k in hub)
    from_hub, _ = detr.convert_hf_state_dict(hub, config.to_dict())
    assert from_hub.keys() == state.keys() and all(torch.equal(from_hub[k], state[k]) for k in state)

    trunk = {"model.backbone.conv_encoder.model." + k[len("backbone.0.body."):]: v
             for k, v in state.items() if k.startswith("backbone.0.body.")}  # timm's ResNet names are torchvision's
    timm_layout = {**{k: v for k, v in hub.items() if ".conv_encoder.model." not in k}, **trunk}
    from_timm, _ = detr.convert_hf_state_dict(timm_layout, config)
    assert from_timm.keys() == state.keys() and all(torch.equal(from_timm[k], state[k]) for k in state)


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="hf_config: model_type 'deformable_detr' is not supported"):
        detr.convert_hf_state_dict({}, {"model_type": "deformable_detr"})
    with pytest.raises(TypeError, match="hf_config: expected a transformers DetrConfig"):
        detr.convert_hf_state_dict({}, 3)
