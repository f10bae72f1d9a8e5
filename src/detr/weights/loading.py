"""Where model weights come from: a local file, a transformers folder, a published name or a HuggingFace hub id,
into a built model.

Published models are downloaded once (`hub.py`); what a path is comes from `identify.file_kind`; transformers
folders are converted to official names (`from_hf.py`); what a checkpoint holds is decided by
`identify.config_from_checkpoint`, the one routine that does so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, load_checkpoint, load_model_weights
from ..config import Config
from ..models.backbone import Backbone
from ..models.build import Model, build_model, inference_parts
from ..registry import MODELS, PUBLISHED
from .from_hf import HF_WEIGHT_FILES, is_hf_folder, read_hf_folder
from .hub import WeightsError, cached_download, hf_download, is_hf_repo_id
from .identify import config_from_checkpoint, file_kind

log = logging.getLogger(__name__)


def resolve_weights(name_or_path: str | os.PathLike, progress: bool = True) -> Path:
    """The local file or transformers folder for `name_or_path`, downloading a published model on first use.

    Args:
        name_or_path: a path to a checkpoint file or a transformers folder (config.json + model.safetensors
            or pytorch_model.bin), a name in `detr.registry.PUBLISHED`, or a HuggingFace hub id
            (`facebook/detr-resnet-50`: fetched with huggingface_hub when it is installed).
        progress: show a progress bar while downloading.

    Returns:
        The path of an existing file or folder.

    Raises:
        WeightsError: the path does not exist and is not a known name or hub id, or the download
            failed (offline, or the file's hash does not match).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if is_hf_folder(path):
            return path
        raise WeightsError(f"{path}: is a folder without a config.json; expected a checkpoint file (.pth or "
                           f".safetensors) or a transformers folder (config.json with {' or '.join(HF_WEIGHT_FILES)})")
    name = str(name_or_path)
    if name in MODELS and name not in PUBLISHED:
        raise WeightsError(f"{name}: no published weights can be downloaded by this name (the official release "
                           "files carry no hash to check them by); download them yourself and pass the file, or "
                           "train one with detr train --model " + name)
    if is_hf_repo_id(name):
        try:
            return hf_download(name)
        except WeightsError as e:
            raise WeightsError(f"{e} ({name} is no local file or folder either)") from None
    if name not in PUBLISHED:
        raise WeightsError(f"{name}: no such file or folder, not a HuggingFace hub id (owner/name), and not a "
                           f"published model name (known names: {', '.join(PUBLISHED)})")
    return cached_download(PUBLISHED[name].url, progress=progress)


def load_weights(name_or_path: str | os.PathLike, progress: bool = True) -> tuple[dict[str, Any], str]:
    """The checkpoint dict (`detr.checkpoint.load_checkpoint`'s) of anything `resolve_weights` accepts, and the
    path it came from (for messages, and for `config_from_checkpoint` to recognise a published file by name).

    A transformers folder is converted to official names, with its Config (`read_hf_folder`).

    Raises:
        WeightsError: as `resolve_weights`.
        CheckpointError: the file or folder is not readable DETR weights, or is a PaddleDetection file (which
            `detr convert --from paddle` converts first: its head count is not in the weights); the message
            names the file.
    """
    path = resolve_weights(name_or_path, progress=progress)
    kind = file_kind(path)
    if kind == "pdparams":
        raise CheckpointError(f"{path}: a PaddleDetection file is converted first, since its head count is not in "
                              f"the weights: detr convert --from paddle {path} --output OUT.pth [--nheads N]")
    return (read_hf_folder(path) if kind == "hf_folder" else load_checkpoint(path)), str(path)


def imagenet_backbone_url(backbone: str) -> str:
    """torchvision's ImageNet weights for ResNet `backbone` (IMAGENET1K_V1, what the official code starts from)."""
    import torchvision

    return torchvision.models.get_model_weights(backbone)["IMAGENET1K_V1"].url


def load_backbone_weights(backbone: Backbone, source: str | os.PathLike, progress: bool = True) -> Path:
    """Load ImageNet weights ("imagenet", downloaded once into `cache_dir()`) or a torchvision
    ResNet state-dict file into `backbone`'s trunk; its classifier (`fc.*`) is ignored.

    Returns:
        The file the weights came from.

    Raises:
        WeightsError: the file is missing or cannot be downloaded.
        CheckpointError: the file is unreadable or holds another ResNet's weights.
    """
    if str(source) == "imagenet":
        try:
            path = cached_download(imagenet_backbone_url(backbone.name), progress=progress)
        except WeightsError as e:
            raise WeightsError(f"ImageNet weights for the {backbone.name} backbone: {e}; or pass "
                               "--backbone_weights FILE, or --backbone_weights none to start from random "
                               "weights") from None
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"--backbone_weights {path}: no such file")
    state = load_checkpoint(path)["model"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    load_model_weights(backbone.body, state, source=f"backbone weights {path} ({backbone.name})")
    return path


def load_pretrained(name_or_path: str | os.PathLike, model: str | None = None, progress: bool = True,
                    **overrides: Any) -> tuple[Model, Config]:
    """Build a DETR in eval mode from a published name, one of our checkpoints, an official file, or a
    transformers folder or hub id.

    Args:
        name_or_path: what `resolve_weights` accepts: a checkpoint path (.pth / .safetensors), a transformers
            folder, a name in `detr.registry.PUBLISHED` or a HuggingFace hub id.
        model: an architecture name (e.g. "detr_r50_dc5"), for what an official file's shapes do not say.
        progress: progress bar when downloading.
        **overrides: ModelConfig fields, e.g. `dilation=True` or `nheads=8` for an official file.

    Returns:
        The model (on CPU, eval mode) and its Config (`config.data.class_names` is None when
        the file does not say).

    Raises:
        WeightsError: the weights cannot be found or downloaded.
        CheckpointError: the file is not a usable DETR checkpoint, or does not fit the model.
    """
    ckpt, source = load_weights(name_or_path, progress=progress)
    cfg = config_from_checkpoint(ckpt, source, model=model, **overrides)
    cfg.model, state = inference_parts(cfg.model, ckpt["model"])
    net = build_model(cfg.model)
    load_model_weights(net, state, source=source)
    return net.eval(), cfg
