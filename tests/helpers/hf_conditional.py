"""transformers' ConditionalDetrForObjectDetection as the reference of the Conditional DETR tests.

Built offline with random weights (transformers' own ResNet, no timm, no download). The port's
decoder deviates from the official code when `auxiliary_loss` is set (it feeds each layer's
LayerNorm'd output to the next layer), so the reference model runs with `auxiliary_loss=False`
(the official layer-to-layer path) and every layer's outputs are made here from its own modules in
the official way: `class_labels_classifier(layernorm(h_l))` and `bbox_predictor(layernorm(h_l))` offset
by the inverse sigmoid of its reference points (official models/conditional_detr.py, ConditionalDETR.forward).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from transformers import ConditionalDetrConfig, ConditionalDetrForObjectDetection, ResNetConfig
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

import detr
from detr.models.build import build_model

NUM_CLASSES, NUM_QUERIES, DEC_LAYERS = 20, 50, 3
# The official weights of the loss terms (official main.py: cls_loss_coef 2, bbox 5, giou 2); transformers'
# loss function sums loss_ce with weight 1, so the totals are made here from its terms.
OFFICIAL_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def hf_config(dc5: bool = False, dropout: float = 0.0, aux: bool = False) -> ConditionalDetrConfig:
    resnet = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                          out_features=["stage4"])
    return ConditionalDetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                                 backbone_config=resnet, num_queries=NUM_QUERIES, decoder_layers=DEC_LAYERS,
                                 num_labels=NUM_CLASSES, dropout=dropout, dilation=dc5, auxiliary_loss=aux)


def _dilate_last_stage(model: ConditionalDetrForObjectDetection) -> None:
    """DC5 in transformers' own ResNet, which has no dilation option: torchvision's
    `replace_stride_with_dilation=[False, False, True]` done by hand (stride 1; dilation 2 after the first block)."""
    stage = model.model.backbone.model.encoder.stages[3]
    for i, block in enumerate(stage.layers):
        conv = block.layer[1].convolution
        if i == 0:
            conv.stride = (1, 1)
            block.shortcut.convolution.stride = (1, 1)
        else:
            conv.dilation, conv.padding = (2, 2), (2, 2)


def _randomise(model: nn.Module, seed: int) -> None:
    """Non-trivial values everywhere: LayerNorms and frozen BatchNorms away from identity, biases non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() == 1:
                t.add_(0.1 * noise)
        # A random ResNet with frozen BatchNorm is not normalised (features ~1e3 here): scale the projection so
        # that the transformer sees O(1) inputs, as with a trained backbone; else the first encoder layer's
        # softmax saturates and its q/k gradients lose ~1e-3 of their precision in float32.
        model.model.input_projection.weight.mul_(0.01)
        # Spread the queries (reference points over the image, distinct boxes and scores) so that matching has
        # clear winners rather than float-noise ties between near-identical queries.
        model.model.query_position_embeddings.weight.normal_(0, 1, generator=g)
        for head, std in ((model.model.decoder.ref_point_head.layers[-1], 0.3), (model.bbox_predictor.layers[-1], 0.1),
                          (model.class_labels_classifier, 0.1)):
            head.weight.normal_(0, std, generator=g)


def make_pair(dc5: bool = False, dropout: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The transformers model (random weights) and ours with the same weights through `convert_hf_state_dict`."""
    torch.manual_seed(seed)
    config = hf_config(dc5, dropout)
    theirs = ConditionalDetrForObjectDetection(config)
    if dc5:
        _dilate_last_stage(theirs)
    _randomise(theirs, seed)
    for name, p in theirs.named_parameters():  # train layer2-4 as the official backbone (the port freezes all
        if ".stages." in name:                 # of its own ResNet: its "stage.1" test misses "stages.1")
            p.requires_grad_(".stages.0." not in name)
    state, model_cfg = detr.convert_hf_state_dict(theirs.state_dict(), config)
    ours = build_model(model_cfg)
    ours.load_state_dict(state)
    return theirs.to(dtype), ours.to(dtype)


def two_images(seed: int = 1, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    # drawn in float32 whatever `dtype`, so that float64 runs see the same images
    return [torch.randn(3, 64, 96, generator=g).to(dtype), torch.randn(3, 88, 64, generator=g).to(dtype)]


def padded(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    """transformers' inputs: a zero-padded batch and pixel_mask (1 on image, 0 on padding)."""
    h, w = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    batch = images[0].new_zeros(len(images), 3, h, w)
    mask = torch.zeros(len(images), h, w, dtype=torch.long)
    for img, b, m in zip(images, batch, mask):
        b[:, : img.shape[1], : img.shape[2]] = img
        m[: img.shape[1], : img.shape[2]] = 1
    return batch, mask


def _inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def reference_outputs(model: ConditionalDetrForObjectDetection, images: list[Tensor]) -> dict:
    """Every decoder layer's logits and boxes from the transformers modules, layers chained as the official code.

    Returns {"pred_logits", "pred_boxes", "aux_outputs"} (our output contract) and "stacked" ([L, ...] tensors).
    """
    assert not model.config.auxiliary_loss, "the port's auxiliary_loss path chains normed outputs (see module doc)"
    batch, mask = padded(images)
    layers = []
    hooks = [layer.register_forward_hook(lambda m, a, out: layers.append(out[0] if isinstance(out, tuple) else out))
             for layer in model.model.decoder.layers]
    try:
        base = model.model(pixel_values=batch, pixel_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    offset = _inverse_sigmoid(base.reference_points).transpose(0, 1)  # [B, Q, 2]
    logits, boxes = [], []
    for h in layers:
        normed = model.model.decoder.layernorm(h)
        logits.append(model.class_labels_classifier(normed))
        raw = model.bbox_predictor(normed)
        boxes.append(torch.cat([raw[..., :2] + offset, raw[..., 2:]], dim=-1).sigmoid())
    logits, boxes = torch.stack(logits), torch.stack(boxes)  # [L, B, Q, C], [L, B, Q, 4]
    return {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "stacked": (logits, boxes),
            "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}


def reference_losses(model: ConditionalDetrForObjectDetection, outputs: dict, targets: list[dict]) -> dict:
    """transformers' Conditional DETR loss terms (its DeformableDetr loss function) on `outputs`."""
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"].to(outputs["pred_boxes"].dtype)} for t in targets]
    config = copy.deepcopy(model.config)
    config.auxiliary_loss = True  # for the loss function only: score every layer
    logits, boxes = outputs["stacked"]
    _, loss_dict, _ = DeformableDetrForObjectDetectionLoss(outputs["pred_logits"], labels, logits.device,
                                                            outputs["pred_boxes"], config, logits, boxes)
    return loss_dict


def official_total(losses: dict) -> Tensor:
    """The official weighted sum of every layer's loss terms."""
    return sum(v * OFFICIAL_WEIGHTS[k.rsplit("_", 1)[0] if k[-1].isdigit() else k]
               for k, v in losses.items() if not k.startswith(("cardinality", "class_error")))
