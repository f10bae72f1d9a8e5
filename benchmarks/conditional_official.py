"""Conditional DETR side by side with the official code (Atten4Vis/ConditionalDETR), in float64.

The official code is not on a package registry, so this is not a CI test: give it a checkout.

    python benchmarks/conditional_official.py PATH/TO/ConditionalDETR

The official model gets random weights (R50 trunk shared with ours through an adapter, 3 decoder layers,
50 queries, 20 classes, dropout 0); ours loads its state dict strictly. Printed: whether the parameter
names are the same, the largest differences of every layer's logits and boxes, of the loss terms
(official SetCriterion with its focal loss and matcher) and of the gradients.
Two things are neutralised from the outside, for torch 2.x: the removed `torch._overrides` module and
`_LinearWithBias` (the official version test picks it on torch 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.modules.linear
import torch.overrides

import detr
from detr.models.backbone import Joiner
from detr.models.detr import pad_images


def load_official(root: Path):
    sys.modules.setdefault("torch._overrides", torch.overrides)
    torch.nn.modules.linear._LinearWithBias = torch.nn.modules.linear.NonDynamicallyQuantizableLinear
    sys.path.insert(0, str(root))
    from models.conditional_detr import ConditionalDETR, SetCriterion
    from models.matcher import HungarianMatcher
    from models.transformer import Transformer
    from util.misc import NestedTensor
    return ConditionalDETR, SetCriterion, HungarianMatcher, Transformer, NestedTensor


def main(root: Path) -> None:
    ConditionalDETR, SetCriterion, HungarianMatcher, Transformer, NestedTensor = load_official(root)

    class Adapter(Joiner):  # our backbone and positions as the official Joiner's interface
        def forward(self, samples):  # type: ignore[override]
            feats, mask, pos = Joiner.forward(self, samples.tensors, samples.mask)
            return [NestedTensor(feats, mask)], [pos]

    torch.manual_seed(0)
    ours = detr.create_model("conditional_detr_r50", num_classes=20, num_queries=50, dec_layers=3, dropout=0.0)
    transformer = Transformer(d_model=256, nhead=8, num_queries=50, num_encoder_layers=6, num_decoder_layers=3,
                              dim_feedforward=2048, dropout=0.0, return_intermediate_dec=True)
    theirs = ConditionalDETR(Adapter(ours.backbone[0], ours.backbone[1]), transformer, 20, 50, aux_loss=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial norms and biases, spread queries, O(1) transformer inputs
        for p in theirs.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        theirs.query_embed.weight.normal_(0, 1, generator=g)
        theirs.transformer.decoder.ref_point_head.layers[-1].weight.normal_(0, 0.3, generator=g)
        theirs.bbox_embed.layers[-1].weight.normal_(0, 0.1, generator=g)
        theirs.input_proj.weight.mul_(0.01)
    print("same parameter names:", set(theirs.state_dict()) == set(ours.state_dict()), len(ours.state_dict()))
    ours.load_state_dict(theirs.state_dict())
    theirs, ours = theirs.double().train(), ours.double().train()

    gi = torch.Generator().manual_seed(3)
    images = [torch.randn(3, 64, 96, generator=gi).double(), torch.randn(3, 88, 64, generator=gi).double()]
    out_theirs, out_ours = theirs(NestedTensor(*pad_images(images))), ours(images)
    layers = lambda d: [*d["aux_outputs"], d]  # noqa: E731
    for key in ("pred_logits", "pred_boxes"):
        diff = max((a[key] - b[key]).abs().max().item() for a, b in zip(layers(out_theirs), layers(out_ours)))
        print(f"{key}: max |official - ours| = {diff:.2e}")

    targets = [{"labels": torch.tensor([1, 5, 7]),
                "boxes": torch.tensor([[.5, .5, .2, .2], [.3, .3, .1, .2], [.7, .6, .3, .3]]).double()},
               {"labels": torch.tensor([3]), "boxes": torch.tensor([[.4, .5, .3, .2]]).double()}]
    criterion = detr.create_criterion(20, 3, class_loss="focal")
    weights = criterion.weight_dict
    official = SetCriterion(20, HungarianMatcher(2, 5, 2), weights, 0.25, ["labels", "boxes", "cardinality"])
    lo, lw = official(out_theirs, targets), criterion(out_ours, targets)
    rel = max(((lw[k] - lo[k]).abs() / lo[k].abs()).item() for k in weights)
    print(f"loss terms: max relative difference {rel:.2e}")
    sum(lo[k] * w for k, w in weights.items()).backward()
    criterion.total_loss(lw).backward()
    # the backbone is one module shared by both models: its gradient is the sum of the two
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None and not n.startswith("backbone")}
    own = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None and not n.startswith("backbone")}
    top = max(v.abs().max().item() for v in grads.values())
    rel = max(((own[k] - v).abs().max() / max(v.abs().max().item(), 1e-2 * top)).item() for k, v in grads.items())
    print(f"gradients ({len(grads)} tensors): max relative difference {rel:.2e}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "models" / "conditional_detr.py").is_file():
        sys.exit("usage: python benchmarks/conditional_official.py PATH/TO/ConditionalDETR (a checkout of the "
                 "official repository)")
    main(Path(sys.argv[1]))
