"""Files, safely: atomic writes of checkpoints and outputs, and checkpoint reading that runs no code.

- Writes are atomic: a temporary file in the same folder, flushed to disk, then renamed
  over the target, so a crash or a full disk never leaves a half-written checkpoint.
- Reads never unpickle arbitrary objects: `torch.load(weights_only=True)` (with only
  `argparse.Namespace` allowed, for the official training checkpoints' "args"), or
  safetensors. A file that is missing, empty, truncated, not a checkpoint or that tries
  to run code is refused with a `CheckpointError` naming the file and the problem.

Our `.pth` checkpoints are dicts: "model" (state dict), "config" (`Config.to_dict()`),
and for training checkpoints "optimizer", "lr_scheduler", "epoch", "rng" and more.
Our `.safetensors` files hold the model weights with the config as JSON metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, fsync, then rename to `path`; on any error the old file stays."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise CheckpointError(f"{path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any, indent: int | None = None) -> None:
    """Write `data` as JSON atomically (see `atomic_write`)."""
    text = json.dumps(data, indent=indent)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def check_output_folder(path: str | os.PathLike, argument: str = "--output") -> Path:
    """`path` as a Path, or a ValueError naming `argument` when it is a file or an unwritable folder."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{argument} {folder}: is a file, not a folder")
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{argument} {folder}: folder is not writable")
    return folder


def output_folder(path: str | os.PathLike, argument: str = "--output") -> Path:
    """Create (if needed, with its parents) and return a writable folder; errors name `argument`."""
    folder = check_output_folder(path, argument)
    folder.mkdir(parents=True, exist_ok=True)
    return check_output_folder(folder, argument)


def output_file(path: str | os.PathLike, argument: str = "--output") -> Path:
    """`path` as a Path whose folder exists, or a ValueError naming `argument`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{argument} {path}: is a folder; expected a file name")
    if not path.parent.is_dir():
        raise ValueError(f"{argument} {path}: folder {path.parent} does not exist")
    return path


# Test hook: seconds to sleep inside a checkpoint write (after the data, before the rename),
# so that fault-injection tests can kill a run in the middle of writing.
SLEEP_IN_WRITE_ENV = "DETR_TEST_SLEEP_IN_CHECKPOINT_WRITE"


def save_checkpoint(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> None:
    """Atomically save a checkpoint dict (`.safetensors`: only "model" and "config" are kept)."""
    if str(path).endswith(".safetensors"):
        save_safetensors(path, checkpoint["model"], checkpoint.get("config"))
        return

    def write(tmp: str) -> None:
        torch.save(dict(checkpoint), tmp)
        pause = float(os.environ.get(SLEEP_IN_WRITE_ENV, "0") or 0)
        if pause > 0:
            time.sleep(pause)

    atomic_write(path, write)


def save_safetensors(path: str | os.PathLike, state_dict: Mapping[str, Tensor], config: Mapping | None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {"format": "pt", "config": json.dumps(config) if config is not None else "null"}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without running any code from it.

    Accepts our `.pth` and `.safetensors` files, official DETR checkpoints (`{"model": ...}`,
    with or without "args"), and bare state dicts (returned as `{"model": state_dict}`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes)")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # the unpickler met a class or function it would have to import
            raise CheckpointError(f"{path}: refused to load: it references Python objects other than tensors "
                                  f"and plain containers, which could run code ({_reason(e)})") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt?): {_reason(e)}") from None
    except Exception as e:  # torch raises many types on truncated or random bytes
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {first_line(e)}") from None
    return _as_checkpoint(obj, path)


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(metadata.get("config", "null"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {first_line(e)}") from None
    return {"model": state, "config": config}


def _as_checkpoint(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, Mapping) and "model" in obj:
        ckpt = dict(obj)
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        ckpt = {"model": dict(obj)}
    else:
        raise CheckpointError(f"{path}: not a DETR checkpoint (expected a dict with a 'model' state dict, "
                              f"got {type(obj).__name__})")
    if not isinstance(ckpt["model"], Mapping):
        raise CheckpointError(f"{path}: 'model' is a {type(ckpt['model']).__name__}, not a state dict")
    try:
        ckpt["model"] = plain_state_dict(ckpt["model"])
    except TypeError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if isinstance(ckpt.get("args"), argparse.Namespace):
        ckpt["args"] = vars(ckpt["args"])
    return ckpt


def plain_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with a DDP `module.` prefix stripped; a TypeError for anything that is not one."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key.removeprefix("module.")] = value
    return out


def load_model_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint",
                       skip_prefixes: tuple[str, ...] = ()) -> None:
    """Strictly load `state_dict` into `model`, explaining every key that does not fit.

    Keys starting with one of `skip_prefixes` keep the model's own values (e.g. a class
    head re-initialised for fine-tuning on another number of classes).
    """
    own = model.state_dict()
    state = {k: v for k, v in state_dict.items() if not k.startswith(skip_prefixes)}
    missing = [k for k in own if k not in state and not k.startswith(skip_prefixes)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:5]))
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the checkpoint, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit this model ({' | '.join(problems)}); "
                              "was it saved for another model name, backbone or number of classes/queries?")
    model.load_state_dict({**own, **state})


def _reason(e: BaseException) -> str:
    """The informative line of torch's long weights_only error message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Trying to load", "Unsupported")):
            return ln[:300]
    return first_line(e)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), else its type's name."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
