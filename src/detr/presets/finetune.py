"""`--data DIR`: fine-tune the COCO-trained detr_r50 on the user's data.

The paper's 300 epochs (lr drop at 200) train the transformer from random weights; starting from a trained
detector only the class head is new, and the usual fine-tuning of DETR on a small set (the official
fine-tuning advice and its users' reports) settles within tens of epochs: 50 epochs with the rate divided by 10
after 40, at the paper's rates (1e-4, backbone 1e-5), stopping early after 10 evaluations without a better val AP
(a small set's AP plateaus long before 50 epochs). Explicit flags replace any of these.
"""

from __future__ import annotations

from typing import Any

FINETUNE_PRESET: dict[str, Any] = {
    "weights": "detr_r50",  # the published COCO model; --weights none: the backbone's weights alone
    "epochs": 50,
    "lr_drop": 40,
    "lr": 1e-4,
    "lr_backbone": 1e-5,
    "patience": 10,  # evaluations without a better value of best.pth's metric (--patience)
}
