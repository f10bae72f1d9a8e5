"""The segmentation model, its losses and postprocessing side by side with the official models/segmentation.py
(detr==0.1.4): identical random weights, a small transformer on ResNet-50 (the official mask head reads its
1024/512/256-channel layers), two images of different sizes."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

import detr

from ..helpers import official
from .test_alignment import float64_gate, to_float64

SMALL = {"hidden_dim": 256, "nheads": 8, "enc_layers": 2, "dec_layers": 2, "dim_feedforward": 256,
         "num_queries": 10, "num_classes": 20}


def make_pair(ref, **extra):
    """The official DETRsegm with random weights (the mask head's GroupNorms too), and ours loaded from it."""
    kw = {**SMALL, **extra}
    theirs = official.build_model(ref, masks=True, **kw)
    with torch.no_grad():  # GroupNorm starts at weight 1, bias 0: random values so that a swapped one shows
        for name, p in theirs.named_parameters():
            if ".gn" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    ours = detr.create_model("detr_r50", masks=True, **kw)
    ours.load_state_dict(detr.convert_official_state_dict(theirs.state_dict()))
    return theirs, ours


def two_images(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 96, 128, generator=g), torch.randn(3, 120, 88, generator=g)]


def random_targets(images: list[torch.Tensor], num_classes: int = 20, counts=(3, 2), seed: int = 2) -> list[dict]:
    """Boxes, labels and random blob masks at each image's size."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for img, n in zip(images, counts):
        h, w = img.shape[-2:]
        centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        coarse = torch.rand(n, 1, h // 8, w // 8, generator=g)
        masks = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[:, 0] > 0.6
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=g),
                        "boxes": torch.cat([centre, size], dim=1), "masks": masks})
    return targets


@pytest.mark.reference
def test_pred_masks_match_official_in_eval(ref):
    theirs, ours = make_pair(ref)
    images = two_images()
    with torch.no_grad():
        a = theirs.eval()(images)
        b = ours.eval()(images)
    assert b["pred_masks"].shape == a["pred_masks"].shape == (2, 10, 30, 32)
    assert (a["pred_masks"] - b["pred_masks"]).abs().max() <= 1e-4
    assert (a["pred_logits"] - b["pred_logits"]).abs().max() <= 1e-4
    assert (a["pred_boxes"] - b["pred_boxes"]).abs().max() <= 1e-5


def official_gradients(ref, model: torch.nn.Module, images, targets) -> dict[str, torch.Tensor]:
    """The official model's gradients of its weighted loss, masks included, in the model's dtype, as float64."""
    crit = official.build_criterion(ref, num_classes=SMALL["num_classes"], dec_layers=SMALL["dec_layers"], masks=True)
    losses = crit.to(next(model.parameters()).dtype)(model.train()(images), targets)
    sum(losses[k] * w for k, w in crit.weight_dict.items()).backward()
    return {k: p.grad.double() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.reference
def test_training_step_matches_official(ref, record_property):
    """dropout 0: every loss term (loss_mask and loss_dice included) within 1e-5 relative, and every parameter's
    gradient (the mask head's and the detector's) within the detection tests' float64 gate."""
    theirs, ours = make_pair(ref, dropout=0.0)
    theirs64 = copy.deepcopy(theirs).double()
    images = two_images()
    targets = random_targets(images)
    crit_theirs = official.build_criterion(ref, num_classes=20, dec_layers=2, masks=True)
    crit_ours = detr.create_criterion(num_classes=20, dec_layers=2, masks=True)
    out_a, out_b = theirs.train()(images), ours.train()(images)
    assert (out_a["pred_masks"] - out_b["pred_masks"]).abs().max() <= 1e-4

    la, lb = crit_theirs(out_a, targets), crit_ours(out_b, targets)
    assert set(la) == set(lb) and {"loss_mask", "loss_dice"} <= set(lb)
    worst_loss = max(((lb[k] - la[k]).abs() / la[k].abs().clamp(min=1e-12)).item() for k in la)
    for k in la:
        assert torch.allclose(lb[k], la[k], rtol=1e-5, atol=1e-6), (k, la[k], lb[k])
    assert crit_ours.weight_dict == {k: float(v) for k, v in crit_theirs.weight_dict.items()}

    sum(la[k] * w for k, w in crit_theirs.weight_dict.items()).backward()
    crit_ours.total_loss(lb).backward()
    grads32 = {k: p.grad for k, p in theirs.named_parameters() if p.grad is not None}
    grads64 = official_gradients(ref, theirs64, to_float64(images), [to_float64(t) for t in targets])
    grads = {k: p.grad for k, p in ours.named_parameters() if p.grad is not None}
    assert set(grads) == set(grads32) == set(grads64)
    head = [k for k in grads if k.startswith(("mask_head.", "bbox_attention."))]
    assert len(head) == 32
    failures, worst, worst_head = [], (0.0, ""), (0.0, "")
    for k, g in grads.items():
        ratio, message = float64_gate(g, grads32[k], grads64[k])
        worst = max(worst, (ratio, k))
        if k in head:
            worst_head = max(worst_head, (ratio, k))
        if ratio > 1:
            failures.append(f"{k}: {message}")
    summary = (f"segmentation: worst loss term {worst_loss:.1e} relative; float64 gate worst {worst[0]:.3f}x "
               f"({worst[1]}), mask head worst {worst_head[0]:.3f}x ({worst_head[1]})")
    record_property("gradients", summary)
    print(summary)
    assert not failures, f"{len(failures)} of {len(grads)} gradients fail the float64 gate:\n" + "\n".join(failures)


def official_id2rgb(ids: np.ndarray) -> np.ndarray:
    """panopticapi's id2rgb, which the official postprocessing imports (panopticapi is not on the registry)."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    ids = ids.copy()
    for i in range(3):
        rgb[..., i] = ids % 256
        ids //= 256
    return rgb


def official_rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def open_png(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def panoptic_outputs(seed: int, batch: int = 2, queries: int = 24, size=(24, 30)) -> dict[str, torch.Tensor]:
    """Outputs of a 250-class segmentation model with many confident queries: things (ids <= 90) and stuff,
    repeated stuff classes (merged) and masks that win only a few pixels (dropped)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, 251, generator=g)
    classes = torch.tensor([1, 5, 17, 44, 92, 92, 118, 184, 184, 184, 200, 3])
    picked = classes[torch.randint(0, len(classes), (batch, queries), generator=g)]
    confident = torch.rand(batch, queries, generator=g) < 0.7
    logits[confident, picked[confident]] += 12.0 * torch.rand(int(confident.sum()), generator=g)  # some under 0.85
    masks = torch.nn.functional.interpolate(torch.randn(batch, queries, 6, 8, generator=g) * 4, size=size,
                                            mode="bilinear")
    masks[:, ::5] -= 6  # these queries win a handful of pixels at most
    return {"pred_logits": logits, "pred_boxes": torch.rand(batch, queries, 4, generator=g) * 0.5 + 0.2,
            "pred_masks": masks}


@pytest.mark.reference
def test_panoptic_postprocess_matches_official(ref, monkeypatch):
    """Identical segment-id maps, classes and areas on the same outputs; the cases merge stuff and drop segments."""
    monkeypatch.setattr(ref.segmentation, "id2rgb", official_id2rgb, raising=False)
    monkeypatch.setattr(ref.segmentation, "rgb2id", official_rgb2id, raising=False)
    theirs = ref.segmentation.PostProcessPanoptic({i: i <= 90 for i in range(251)}, threshold=0.85)
    processed, targets = [(90, 120), (96, 70)], [(180, 240), (150, 109)]
    merged = dropped = 0
    for seed in range(6):
        outputs = panoptic_outputs(seed)
        a = theirs(outputs, processed, targets)
        b = detr.postprocess_panoptic(outputs, processed, targets)
        for x, y in zip(a, b):
            ids_a = official_rgb2id(np.asarray(open_png(x["png_string"])))
            ids_b = official_rgb2id(np.asarray(open_png(y["png_string"])))
            assert np.array_equal(ids_a, ids_b) and np.array_equal(ids_b, y["segment_ids"].numpy())
            assert ids_b.shape == (targets[0] if x is a[0] else targets[1])
            assert [(s["id"], s["category_id"], s["area"], s["isthing"]) for s in x["segments_info"]] == \
                [(s["id"], s["category_id"], s["area"], s["isthing"]) for s in y["segments_info"]]
            for s in y["segments_info"]:  # the COCO panoptic fields that the official output lacks
                ys, xs = np.nonzero(ids_b == s["id"])
                assert s["iscrowd"] == 0 and s["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
        for i in range(len(outputs["pred_logits"])):
            scores, labels = outputs["pred_logits"][i].softmax(-1).max(-1)
            kept = labels[(scores > 0.85) & (labels != 250)].tolist()
            merged += len(kept) - len(set(c for c in kept if c > 90)) - sum(c <= 90 for c in kept)
            dropped += len(kept) - len(b[i]["segments_info"])
    assert merged > 0 and dropped > merged  # both paths ran


@pytest.mark.reference
def test_panoptic_postprocess_without_segments(ref, monkeypatch):
    monkeypatch.setattr(ref.segmentation, "id2rgb", official_id2rgb, raising=False)
    monkeypatch.setattr(ref.segmentation, "rgb2id", official_rgb2id, raising=False)
    # its util.misc.interpolate (F.interpolate that accepts empty input) reads torchvision "0.29" as 0.2 and takes a
    # pre-0.7 path that fails on empty input: what it stands for, written out
    def interpolate(x, size, mode="nearest", align_corners=None):
        if x.numel() == 0:
            return x.new_empty((*x.shape[:-2], *size))
        return torch.nn.functional.interpolate(x, size, mode=mode, align_corners=align_corners)

    monkeypatch.setattr(ref.segmentation, "interpolate", interpolate)
    outputs = panoptic_outputs(0)
    outputs["pred_logits"][..., -1] += 100  # every query says "no object"
    a = ref.segmentation.PostProcessPanoptic({i: i <= 90 for i in range(251)})(outputs, [(40, 50), (30, 60)])
    b = detr.postprocess_panoptic(outputs, [(40, 50), (30, 60)])
    for x, y in zip(a, b):
        assert x["segments_info"] == y["segments_info"] == []
        assert not np.asarray(open_png(y["png_string"])).any() and not y["segment_ids"].any()
    assert [y["segment_ids"].shape for y in b] == [(40, 50), (30, 60)]


@pytest.mark.reference
def test_segmentation_postprocess_matches_official(ref):
    """The model's own outputs and sharper synthetic ones: identical masks at the original sizes."""
    theirs, ours = make_pair(ref)
    images = two_images()
    with torch.no_grad():
        model_outputs = ours.eval()(images)
    synthetic = {**model_outputs, "pred_masks": panoptic_outputs(3, queries=10, size=(30, 32))["pred_masks"]}
    processed = torch.tensor([img.shape[-2:] for img in images])
    original = torch.tensor([[480, 640], [600, 440]])
    for outputs in (model_outputs, synthetic):
        a = ref.segmentation.PostProcessSegm()(ref.detr.PostProcess()(outputs, original), outputs, original,
                                               processed)
        b = detr.postprocess_segmentation(outputs, original, processed)
        for x, y in zip(a, b):
            assert torch.equal(x["labels"], y["labels"])
            assert y["masks"].dtype == torch.bool and y["masks"].shape == x["masks"][:, 0].shape
            assert torch.equal(x["masks"][:, 0].bool(), y["masks"])
            assert 0 < y["masks"].float().mean() < 1


@pytest.mark.reference
def test_official_segmentation_file_loads_strictly(ref, tmp_path):
    """An official DETRsegm file (as its training loop saves it) is recognised by its keys (`detr.*`, `mask_head.*`)
    and gives the official pred_masks."""
    from detr.weights.loading import load_pretrained

    theirs, _ = make_pair(ref)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}}, path)
    ours, cfg = load_pretrained(path, dilation=False)
    assert cfg.model.masks and cfg.model.num_classes == 20 and isinstance(ours, detr.DETRsegm)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    with torch.no_grad():
        a, b = theirs.eval()(two_images()), ours(two_images())
    assert (a["pred_masks"] - b["pred_masks"]).abs().max() <= 1e-4
