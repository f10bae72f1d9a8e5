"""From option values named as the flags to a `Config`: shared by `detr train` and `detr.train`.

The command line parses its flags into a dict of the options given; `detr.train` takes them as keyword
arguments. Both end here, so that the same names get the same defaults, presets and errors.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..config import Config, config_from_flags
from ..presets import FINETUNE_PRESET
from ..registry import MODELS, PUBLISHED
from ..weights.architecture import architecture_of

log = logging.getLogger(__name__)

# Command-line switches whose Config field is the opposite.
NEGATED = {"no_aux_loss": "aux_loss", "no_random_crop": "random_crop"}


def finetune_preset(given: dict[str, Any]) -> dict[str, Any]:
    """FINETUNE_PRESET for a `--data` run with these options: the published COCO model of the architecture asked
    for (--model, or DETR's --backbone resnet50/resnet101 with or without --dilation); an architecture with none
    (Conditional DETR, the tiny trunk, ...) starts from its backbone's weights (logged)."""
    preset = dict(FINETUNE_PRESET)
    model = given.get("model")
    if model is None and given.get("family", "detr") == "detr":
        depth = {"resnet50": "r50", "resnet101": "r101"}.get(given.get("backbone", "resnet50"))
        model = f"detr_{depth}{'_dc5' if given.get('dilation') else ''}" if depth else None
    if model in PUBLISHED and not MODELS[model].get("masks"):
        preset["weights"] = model
    else:
        preset.pop("weights")
        if "weights" not in given:
            log.info("--data: no published COCO model of this architecture; starting from --backbone_weights")
    return preset


def weights_architecture(given: dict[str, Any]) -> dict[str, Any]:
    """The architecture of the --weights given (our checkpoint's Config, a transformers config.json, a published
    name), so that fine-tuning restates nothing; flags given explicitly replace any of it, and --model all of it."""
    weights = given.get("weights")
    if not weights or str(weights).lower() == "none":
        return {}
    arch = architecture_of(weights)
    if arch:
        log.info("--weights %s: building its architecture (%s); flags given win", weights,
                 ", ".join(f"{k} {v}" for k, v in arch.items()))
    return arch


def config_from_options(given: dict[str, Any], preset: dict[str, Any] | None = None) -> Config:
    """A Config from the options given (flag names; `model` a --model name). `preset` values, then --model's,
    replace the defaults of options not given; with `data` and no preset, FINETUNE_PRESET is the preset.
    `weights="none"` starts from the backbone's weights alone. Unknown names are a ValueError."""
    given = dict(given)
    for switch, name in NEGATED.items():
        if given.pop(switch, False):
            given[name] = False
    model = given.pop("model", None)
    if model is not None and model not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    if preset is None and given.get("data"):
        preset = finetune_preset({**given, "model": model})
        log.info("--data: fine-tuning defaults (flags given win): %s",
                 ", ".join(f"--{k} {v}" for k, v in preset.items() if k not in given))
    arch = weights_architecture(given) if model is None else {}  # --model names the architecture itself
    values = {**(preset or {}), **arch, **(MODELS[model] if model else {}), **given}
    if str(values.get("weights", "")).lower() == "none":
        values["weights"] = ""
    values.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    values.setdefault("output_dir", "runs/train")
    values.setdefault("num_classes", None)  # resolved from the data
    try:
        return config_from_flags(values)
    except ValueError as e:
        if "recipe" in (preset or {}) and "recipe" not in given and str(e).startswith("--recipe"):
            raise ValueError(f"{e}; --data trains with --recipe {preset['recipe']} unless --recipe is given "
                             "(--recipe official: the paper's options)") from None
        raise
