"""Named sets of option values, one small module each (flat names, as the flags)."""

from .finetune import FINETUNE_PRESET

__all__ = ["FINETUNE_PRESET"]
