"""Pretrained-backbone benchmark: DETR trained from a backbone pretrained on classification (issue #24).

    python benchmarks/backbone_convergence.py --rows vanilla fast --root runs/backbone
    python benchmarks/backbone_convergence.py --smoke     # tiny data, a few iterations: a check of the script

The regime of `detr train` with ImageNet weights (`--weights none`): the trunk has learned features, the
transformer starts from random weights. ImageNet is out of reach offline, so a torchvision ResNet-18 is
pretrained once (cached) on a classification task of *other* images: which of the demo's four shapes an image
holds (multi-label), on the demo set's 5,000 training images at DETR's normalisation. DETR (ResNet-18, frozen
BatchNorm, d=128, 3+3 layers, 16 queries, batch 8) is then trained from it on other_shapes.py's set (2,000
images, 5 classes, 200 val images) at the official rates (1e-4, backbone 1e-5), constant. `--recipe fast` adds
no warm-up here (the trunk is not random). Tables and plots as finetune_convergence.py's, in --root/backbone.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convergence as conv  # noqa: E402
import finetune_convergence as ft  # noqa: E402

from detr.checkpoint import write_bytes  # noqa: E402
from detr.imagenet import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

PRETRAIN_STEPS, PRETRAIN_BATCH = 800, 32
SMOKE_PRETRAIN_STEPS = 4
DETR_SETTINGS: dict[str, Any] = {**conv.SETTINGS, "backbone": "resnet18", "lr": 1e-4, "lr_backbone": 1e-5}
ROWS = ft.ROWS  # the fine-tuning rows; "fast" is --recipe fast here too (no warm-up: the trunk is not random)


def pretrain_backbone(root: Path, steps: int, data: dict[str, Any], seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """A torchvision ResNet-18 trained `steps` steps on multi-label shape presence (cached as root/resnet18.pth,
    a state dict `--backbone_weights` reads); returns its path and a record (last loss, accuracy)."""
    import torchvision
    from PIL import Image

    out, record_file = root / "resnet18.pth", root / "resnet18.json"
    key = {"steps": steps, "data": data, "seed": seed, "batch": PRETRAIN_BATCH}
    if out.is_file() and record_file.is_file() and json.loads(record_file.read_text()).get("key") == key:
        return out, json.loads(record_file.read_text())
    paths = conv.prepare_data(root, data)
    coco = json.loads(Path(paths["train_annotations"]).read_text())
    labels = torch.zeros(len(coco["images"]) + 1, 4)
    for a in coco["annotations"]:
        labels[a["image_id"], a["category_id"] - 1] = 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def image(i: int) -> torch.Tensor:
        img = Image.open(Path(paths["train_images"]) / coco["images"][i - 1]["file_name"]).convert("RGB")
        pixels = torch.from_numpy(np.array(img.resize((128, 128)))).permute(2, 0, 1)
        return (pixels.float() / 255 - mean) / std

    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    hits = total = 0
    for step in range(steps):
        ids = torch.randint(1, len(coco["images"]) + 1, (PRETRAIN_BATCH,))
        x, y = torch.stack([image(int(i)) for i in ids]), labels[ids]
        logits = net(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= steps - 50:  # accuracy over the last 50 batches (training images)
            hits += int(((logits > 0) == (y > 0)).sum())
            total += y.numel()
    torch.save(net.state_dict(), out)
    record = {"key": key, "last_loss": float(loss), "label_accuracy_last_50_batches": hits / max(total, 1)}
    write_bytes(record_file, json.dumps(record, indent=1).encode())
    return out, record


def runs(args: argparse.Namespace) -> tuple[dict[int, dict[str, list[dict[str, Any]]]], dict[str, Any]]:
    data = conv.SMOKE_DATA if args.smoke else conv.DATA
    weights, record = pretrain_backbone(args.root / "pretrain", SMOKE_PRETRAIN_STEPS if args.smoke
                                        else PRETRAIN_STEPS, data)
    settings = {**(conv.SMOKE_SETTINGS if args.smoke else conv.SETTINGS), **DETR_SETTINGS,
                "backbone_weights": str(weights)}
    if args.smoke:
        settings.update({k: conv.SMOKE_SETTINGS[k] for k in ("scales", "max_size", "val_scale")})
    extra = ft.SMOKE_DATA if args.smoke else {"num_val": 200, "image_size": 128}
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for size in args.sizes:
        target = {"num_train": size, **extra, "seed": 1, "backbone": record["key"]}
        results[size] = ft.size_runs(args, size, extra, settings, target, ft.overrides_of)[0]
    return results, record


def main(argv: list[str] | None = None) -> dict[int, dict[str, list[dict[str, Any]]]]:
    args = ft.parse_args(argv, rows=ROWS, sizes=[2000], iterations=1200, eval_every=150, root="runs/backbone")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if args.table_only:
            results = ft.cached_runs(args.root)
            record = json.loads((args.root / "pretrain" / "resnet18.json").read_text())
        else:
            results, record = runs(args)
    finally:
        torch.set_num_threads(threads)
    head = (f"Backbone: torchvision ResNet-18 pretrained {PRETRAIN_STEPS} steps of batch {PRETRAIN_BATCH} on the "
            f"demo shapes' multi-label presence (label accuracy {record['label_accuracy_last_50_batches']:.3f} "
            "over its last 50 batches); DETR ResNet-18 (frozen BatchNorm), d=128, 3+3 layers, 16 queries")
    ft.write_report(args.root, "backbone", ft.table(results, args, head, "Pretrained-backbone benchmark"), results)
    return results


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    main()
