"""transformers checkpoint folders: config.json + model.safetensors (or pytorch_model.bin), read and written.

`read_hf_folder` turns a `DetrForObjectDetection` / `ConditionalDetrForObjectDetection` folder into a checkpoint
dict like `detr.checkpoint.load_checkpoint`'s (official names, a Config with the class names of `id2label`);
`save_hf_folder` writes one that transformers' `from_pretrained` loads strictly. The names and config.json
fields are mapped in `huggingface.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, atomic_write, load_checkpoint, output_folder, write_json
from ..config import Config, DataConfig, ModelConfig
from .huggingface import (
    FAMILIES,
    check_hf_backbone,
    convert_hf_state_dict,
    hf_class_names,
    hf_config,
    to_hf_state_dict,
    uses_timm_backbone,
)

log = logging.getLogger(__name__)


def _preprocessor_config(family: str, size: int, max_size: int) -> dict[str, Any]:
    """transformers' image processor doing our evaluation preprocessing (resize, ImageNet normalisation, pad)."""
    return {"image_processor_type": "DetrImageProcessor" if family == "detr" else "ConditionalDetrImageProcessor",
            "format": "coco_detection", "do_resize": True, "size": {"shortest_edge": size, "longest_edge": max_size},
            "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_pad": True,
            "do_convert_annotations": True}


def save_hf_folder(folder: str | Path, state_dict: Mapping[str, Tensor], model_cfg: ModelConfig,
                   class_names: Sequence[str] | None = None, size: int = 800, max_size: int = 1333,
                   argument: str = "folder") -> Path:
    """Write a transformers checkpoint folder: config.json, model.safetensors and preprocessor_config.json.

    `transformers.DetrForObjectDetection.from_pretrained(folder)` (ConditionalDetrForObjectDetection for the
    Conditional DETR family) loads it with no missing or unexpected key. DC5 models are written with timm's
    backbone (as facebook/detr-resnet-50-dc5 is), which transformers needs the `timm` package to build.

    Args:
        folder: where to write (created if needed; files of the same names are replaced).
        state_dict: the inference model's weights (official names; no training-only parameters).
        model_cfg: its ModelConfig.
        class_names: names by class id, for `id2label`.
        size, max_size: the evaluation resize, for preprocessor_config.json.
        argument: what to call `folder` in error messages (e.g. the command line's OUT_DIR).

    Returns:
        The folder.

    Raises:
        ValueError: a model transformers cannot represent (`check_hf_exportable`), or an unusable folder.
    """
    from safetensors.torch import save_file

    hub = {k: v.detach().cpu().contiguous().clone() for k, v in to_hf_state_dict(state_dict, model_cfg).items()}
    config = hf_config(model_cfg, class_names)
    _check_inverse(hub, config, state_dict, model_cfg)
    out = output_folder(folder, argument)
    atomic_write(out / "model.safetensors", lambda tmp: save_file(hub, tmp, metadata={"format": "pt"}))
    write_json(out / "config.json", config, indent=2)
    write_json(out / "preprocessor_config.json", _preprocessor_config(model_cfg.family, size, max_size), indent=2)
    if uses_timm_backbone(model_cfg):
        log.info("%s: DC5 is written with timm's ResNet backbone; transformers needs `pip install timm` to load it", out)
    return out


def _check_inverse(hub: Mapping[str, Tensor], config: Mapping[str, Any], state_dict: Mapping[str, Tensor],
                   model_cfg: ModelConfig) -> None:
    """Reading back what is about to be written gives the same weights and architecture (the two mappings agree)."""
    back, back_cfg = convert_hf_state_dict(hub, config)
    own = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    fields = ("family", "backbone", "dilation", "hidden_dim", "nheads", "enc_layers", "dec_layers",
              "dim_feedforward", "num_queries", "num_classes", "position_embedding")
    same = back.keys() == own.keys() and all(torch.equal(back[k], own[k].cpu()) for k in own)
    if not same or any(getattr(back_cfg, f) != getattr(model_cfg, f) for f in fields):
        raise RuntimeError("internal error: the transformers layout does not read back as the model written "
                           f"(keys only here: {sorted(own.keys() - back.keys())[:5]}, only there: "
                           f"{sorted(back.keys() - own.keys())[:5]})")


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hf_folder(path: str | Path) -> bool:
    """Whether `path` is a folder with a config.json (a transformers checkpoint folder, if anything)."""
    return (Path(path) / "config.json").is_file()


def read_hf_folder(folder: str | Path) -> dict[str, Any]:
    """A transformers DETR / Conditional DETR folder as a checkpoint dict (`detr.checkpoint.load_checkpoint`'s).

    Reads config.json, then model.safetensors (or its shards, model.safetensors.index.json) or else
    pytorch_model.bin (with `weights_only`: a file that would run code is refused), and preprocessor_config.json
    when there is one (the evaluation resize).

    Returns:
        {"model": state dict in official names, "config": `Config.to_dict()`} with the architecture from
        config.json and the weights' shapes, and class names from `id2label`.

    Raises:
        CheckpointError: naming the file: no or unreadable config.json, another model type, missing, truncated
            or unsafe weights, or weights that do not fit.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: not a transformers checkpoint folder (no config.json; expected "
                              f"config.json with {' or '.join(HF_WEIGHT_FILES)})")
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: not a readable JSON file ({e})") from None
    model_type = hf.get("model_type") if isinstance(hf, dict) else None
    if model_type not in FAMILIES:
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is not a model this package reads; expected "
                              "'detr' (DetrForObjectDetection) or 'conditional_detr' (ConditionalDetrForObjectDetection)")
    try:
        check_hf_backbone(hf)
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    weights, state = _read_hf_weights(folder)
    try:
        state, model_cfg = convert_hf_state_dict(state, hf, source=str(weights))
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{weights}: {e}") from None
    data = DataConfig(class_names=hf_class_names(hf, model_cfg.num_classes), **_preprocessor_sizes(folder))
    return {"model": state, "config": Config(model=model_cfg, data=data).to_dict()}


def _read_hf_weights(folder: Path) -> tuple[Path, dict[str, Tensor]]:
    """The weights file of a transformers folder (safetensors first, as transformers) and its tensors."""
    index = folder / "model.safetensors.index.json"
    if not (folder / HF_WEIGHT_FILES[0]).is_file() and index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a readable safetensors index ({type(e).__name__}: {e})") from None
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_checkpoint(folder / Path(shard).name)["model"])
        return index, state
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name, load_checkpoint(folder / name)["model"]
    raise CheckpointError(f"{folder}: has config.json but no weights: expected {' or '.join(HF_WEIGHT_FILES)}")


def _preprocessor_sizes(folder: Path) -> dict[str, int]:
    """The evaluation resize (val_scale, max_size) that preprocessor_config.json gives, if any."""
    path = folder / "preprocessor_config.json"
    try:
        pre = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s: not readable JSON (%s); using the default resize", path, e)
        return {}
    size = pre.get("size") if isinstance(pre, dict) else None
    if isinstance(size, dict) and isinstance(size.get("shortest_edge"), int):
        longest = size.get("longest_edge")
        return {"val_scale": size["shortest_edge"], **({"max_size": longest} if isinstance(longest, int) else {})}
    if isinstance(size, int):  # the old feature extractors: size and max_size
        return {"val_scale": size, **({"max_size": pre["max_size"]} if isinstance(pre.get("max_size"), int) else {})}
    return {}
