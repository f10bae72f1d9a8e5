"""The starting weights of a training run: `--weights` (fine-tuning) and `--frozen_weights` (the detector under a
mask head).

`train()` reads `--weights` once (`read_finetune_weights`, which also refuses another model family before any
data is read) and hands the state dict on to `load_finetune_weights`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from torch import Tensor

from .. import distributed
from ..checkpoint import CheckpointError, load_checkpoint, load_model_weights
from ..models.build import TRAINING_ONLY, Model
from ..models.segmentation import DETRsegm
from .identify import check_family, family_of
from .loading import load_weights

log = logging.getLogger(__name__)


def read_finetune_weights(path: str | os.PathLike, family: str) -> dict[str, Tensor]:
    """The state dict of --weights (ours, official, a transformers folder, a published name or a hub id).

    Raises:
        CheckpointError: the file holds the weights of another model family than `family` (or is unreadable).
        WeightsError: the weights cannot be found or downloaded.
    """
    state = load_weights(path)[0]["model"]
    check_family(state, family, f"--weights {path}")
    return state


def load_finetune_weights(model: Model, weights: str | os.PathLike | Mapping[str, Tensor],
                          source: str | None = None) -> None:
    """Load --weights into `model`: a path or name (read here), or the state dict `read_finetune_weights` gave.

    A different class count or query count re-initialises that head; Group DETR's extra query groups start as
    copies of the checkpoint's queries unless it has its own. `source` names the weights in messages.
    """
    if isinstance(weights, Mapping):
        state, source = dict(weights), source or "--weights"
    else:
        state, source = load_weights(weights)[0]["model"], source or f"--weights {weights}"
    own = model.state_dict()
    check_family(state, family_of(own) or "detr", source)  # before any key-by-key complaint
    state = {k: v for k, v in state.items() if k in own or not k.startswith(TRAINING_ONLY)}
    skip = []
    for prefix, what in (("class_embed.", "classes"), ("query_embed.", "queries")):
        key = prefix + "weight"
        if key in state and key in own and state[key].shape != own[key].shape:
            skip.append(prefix)
            if distributed.is_main_process():
                log.info("%s: the checkpoint has %d %s outputs, this model %d: %s is re-initialised for "
                         "fine-tuning", source, state[key].shape[0], what, own[key].shape[0], prefix.rstrip("."))
    key = "group_query_embed.weight"
    if key in own and (key not in state or state[key].shape != own[key].shape):
        if "query_embed." in skip:  # the queries are re-initialised: so are their copies
            skip.append("group_query_embed.")
        else:
            state[key] = state["query_embed.weight"].repeat(model.num_groups - 1, 1)  # [(K-1)*Q, E]
    rpb = sorted({k[: k.index("box_rpb.") + 8] for k in own if "box_rpb." in k})  # BoxRPB's MLPs
    if rpb and not any("box_rpb." in k for k in state):  # weights of a model without them: they start fresh
        skip.extend(rpb)
        if distributed.is_main_process():
            log.info("%s: has no BoxRPB weights; --box_rpb's bias starts from its initialisation", source)
    load_model_weights(model, state, source=source, skip_prefixes=tuple(skip))


def load_frozen_detector(model: DETRsegm, path: str | os.PathLike) -> None:
    """Load --frozen_weights (a detector of this architecture, ours or official) into the segmentation model's
    detector (the official recipe: `model.detr.load_state_dict`); Group DETR's and denoising's training-only
    weights of a detection run are left out."""
    state = load_checkpoint(path)["model"]
    if any(k.startswith(("mask_head.", "detr.")) for k in state):
        raise CheckpointError(f"--frozen_weights {path}: holds a segmentation model; give the detector it was "
                              "trained from, or use --weights to fine-tune this one")
    own = model.detr.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(TRAINING_ONLY)}
    load_model_weights(model.detr, state, source=f"--frozen_weights {path}")
