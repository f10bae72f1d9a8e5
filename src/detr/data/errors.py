"""The one exception the data package raises for bad input."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset problem found before training: the message names the file and the problem."""
