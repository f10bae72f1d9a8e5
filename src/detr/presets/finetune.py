"""`--data DIR`: fine-tune the COCO-trained detr_r50 on the user's data with `--recipe fast`.

The paper's 300 epochs (lr drop at 200) train the transformer from random weights; starting from a trained
detector only the class head is new, and a small set's val AP settles within tens of epochs: 50 epochs with the
rate divided by 10 after 40, stopping early after 10 evaluations without a better val AP. `--recipe fast` is
the best combination of the fine-tuning benchmark (BENCHMARKS.md, "Convergence where users are"): from
--weights it trains the backbone at four times the transformer's rate, with three query groups and the
weight average. Explicit flags replace any of these (`--recipe official`: the paper's rates and no extra
options).
"""

from __future__ import annotations

from typing import Any

FINETUNE_PRESET: dict[str, Any] = {
    "weights": "detr_r50",  # the published COCO model; --weights none: the backbone's weights alone
    "recipe": "fast",
    "epochs": 50,
    "lr_drop": 40,
    "patience": 10,  # evaluations without a better value of best.pth's metric (--patience)
}
