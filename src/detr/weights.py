"""Where model weights come from: a local file, or a published model name.

The four published DETR models are downloaded once into a cache folder
(`$DETR_CACHE`, else `torch.hub.get_dir()/checkpoints`, shared with torch.hub), with a
progress bar and a SHA-256 check against the prefix in the published file name. Without
network access, the error says which address to fetch and where to put the file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import Tensor

from .checkpoint import CheckpointError, load_checkpoint, load_model_weights
from .config import Config, ModelConfig, dataclass_from_dict
from .models.backbone import Backbone
from .models.detr import DETR, MODELS, build_model, model_config

# name -> published address; the 8 hex digits before ".pth" start the file's SHA-256.
OFFICIAL_WEIGHTS: dict[str, str] = {
    "detr_r50": "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
    "detr_r50_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth",
    "detr_r101": "https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth",
    "detr_r101_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r101-dc5-a2e86def.pth",
}


class WeightsError(ValueError):
    """Weights that cannot be found or fetched; the message says what to do."""


def cache_dir() -> Path:
    """The folder holding downloaded weights: `$DETR_CACHE`, else torch.hub's checkpoints folder."""
    env = os.environ.get("DETR_CACHE")
    return Path(env).expanduser() if env else Path(torch.hub.get_dir()) / "checkpoints"


def hash_prefix(url: str) -> str:
    """The SHA-256 prefix published in a file name such as `detr-r50-e632da11.pth`."""
    stem = url.rsplit("/", 1)[-1].split(".", 1)[0]
    return stem.rsplit("-", 1)[-1]


def resolve_weights(name_or_path: str | os.PathLike, progress: bool = True) -> Path:
    """The local file for `name_or_path`, downloading a published model on first use.

    Args:
        name_or_path: a path to a checkpoint file, or one of `OFFICIAL_WEIGHTS`.
        progress: show a progress bar while downloading.

    Returns:
        The path of an existing file.

    Raises:
        WeightsError: the path does not exist and is not a known name, or the download
            failed (offline, or the file's hash does not match).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder; expected a checkpoint file (.pth or .safetensors)")
    name = str(name_or_path)
    if name not in OFFICIAL_WEIGHTS:
        raise WeightsError(f"{name}: no such file, and not a published model name "
                           f"(known names: {', '.join(OFFICIAL_WEIGHTS)})")
    return cached_download(OFFICIAL_WEIGHTS[name], progress=progress)


def cached_download(url: str, progress: bool = True) -> Path:
    """`url`'s file in `cache_dir()`, downloaded (with its hash check) on first use."""
    dst = cache_dir() / url.rsplit("/", 1)[-1]
    if not dst.is_file():
        download(url, dst, progress=progress)
    return dst


def download(url: str, dst: Path, progress: bool = True) -> None:
    """Download `url` to `dst` (via a temporary file) and check its SHA-256 prefix.

    Raises:
        WeightsError: the folder cannot be created, the download failed, or the hash
            does not match (the partial file is removed, `dst` is not created).
    """
    help_text = (f"download {url} on a machine with network access and put it at {dst} "
                 f"(or set DETR_CACHE to the folder holding it, or pass the file's path instead of a name)")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights cache folder {dst.parent} ({e.strerror}); "
                           f"set DETR_CACHE to a writable folder, or {help_text}") from None
    expected = hash_prefix(url)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=expected, progress=progress)
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise
        raise WeightsError(f"{url}: the downloaded file is corrupt or not the published one: its SHA-256 "
                           f"does not start with {expected} ({e}); nothing was saved. Try again, or "
                           f"{help_text}") from None
    except (URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(f"could not download the weights ({reason}); {help_text}") from None


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
                    **overrides: Any) -> tuple[DETR, list[str] | None]:
    """Build a DETR in eval mode from a published name, one of our checkpoints or an official file.

    Our checkpoints carry their config, so nothing needs to be said about them. For an
    official state dict the architecture is read from the tensor shapes; what shapes cannot
    tell (dilation, number of heads) comes from the file's "args" when it has them, else from
    `model` (a published name such as "detr_r50_dc5") or `overrides` (e.g. `nheads=8`).

    Args:
        name_or_path: checkpoint path (.pth / .safetensors) or one of `OFFICIAL_WEIGHTS`.
        model: published model name, a hint for what an official file's shapes do not say.
        progress: progress bar when downloading.
        **overrides: ModelConfig fields for an official file (ignored shapes are checked).

    Returns:
        The model (on CPU, eval mode) and the class names from our config (None when the
        file does not say; COCO ids are then implied for 91 classes).

    Raises:
        WeightsError: the weights cannot be found or downloaded.
        CheckpointError: the file is not a usable DETR checkpoint, or does not fit the model.
    """
    path = resolve_weights(name_or_path, progress=progress)
    if model is None and str(name_or_path) in OFFICIAL_WEIGHTS:
        model = str(name_or_path)
    ckpt = load_checkpoint(path)
    config = ckpt.get("config")
    if isinstance(config, Mapping) and config.get("model"):
        try:
            cfg = Config.from_dict(dict(config))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its config is not usable ({e})") from None
        cfg.model = dataclass_from_dict(ModelConfig, {**dataclasses.asdict(cfg.model), **overrides},
                                        where="model options")
        net, names = build_model(cfg.model), cfg.data.class_names
    else:
        opts = infer_model_options(ckpt["model"], ckpt.get("args"), model, str(path))
        net, names = build_model(model_config(model or "detr_r50", **{**opts, **overrides})), None
    load_model_weights(net, ckpt["model"], source=str(path))
    return net.eval(), names


def infer_model_options(state: Mapping[str, Tensor], args: Mapping[str, Any] | None, model: str | None,
                        source: str) -> dict[str, Any]:
    """ModelConfig options of an official-layout state dict, from its shapes (and "args")."""
    required = ("class_embed.weight", "query_embed.weight", "transformer.encoder.layers.0.linear1.weight",
                "backbone.0.body.layer3.0.conv1.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not DETR weights: no {missing[0]!r} among its {len(state)} tensors "
                              f"(e.g. {list(state)[:3]})")
    opts: dict[str, Any] = {}
    args = dict(args) if isinstance(args, Mapping) else {}
    for key in ("nheads", "dilation"):
        if key in args:
            opts[key] = args[key]
    opts.update(
        num_classes=state["class_embed.weight"].shape[0] - 1,
        num_queries=state["query_embed.weight"].shape[0],
        hidden_dim=state["query_embed.weight"].shape[1],
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        enc_layers=_count_layers(state, "transformer.encoder.layers."),
        dec_layers=_count_layers(state, "transformer.decoder.layers."),
        pre_norm="transformer.encoder.norm.weight" in state,
        position_embedding="learned" if "backbone.1.row_embed.weight" in state else "sine",
        backbone=_infer_resnet(state),
    )
    if model is not None and model in MODELS and MODELS[model]["backbone"] != opts["backbone"]:
        raise CheckpointError(f"{source}: holds {opts['backbone']} weights, but model {model!r} uses "
                              f"{MODELS[model]['backbone']}; pass the matching model name")
    if model is not None and model in MODELS and "dilation" not in args:
        opts["dilation"] = MODELS[model]["dilation"]
    return opts


def _count_layers(state: Mapping[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)})


def _infer_resnet(state: Mapping[str, Tensor]) -> str:
    """resnet18/34 have basic blocks (no conv3); 50/101 differ in layer3's block count (6 vs 23)."""
    blocks = _count_layers(state, "backbone.0.body.layer3.")
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state
    if bottleneck:
        return "resnet101" if blocks == 23 else "resnet50"
    return "resnet34" if blocks == 6 else "resnet18"
