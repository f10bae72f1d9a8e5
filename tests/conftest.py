from __future__ import annotations

import pytest
import torch

from .helpers import official


@pytest.fixture(scope="session")
def ref():
    """The official DETR modules (installed into .reference/ on first use)."""
    return official.load()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
