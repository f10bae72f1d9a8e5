"""Official DETR weights -> this package's: the parameter names are the official ones."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..checkpoint import plain_state_dict


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an official DETR state dict (`torch.load(f)["model"]`) to this implementation.

    Kept as an alias of `detr.checkpoint.plain_state_dict` for the official code's users: the parameter names
    are the official ones, so this only strips a DDP `module.` prefix and checks that the input is a state dict.
    """
    return plain_state_dict(state_dict)
