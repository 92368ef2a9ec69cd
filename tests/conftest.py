"""Shared fixtures: tiny model sizes so CPU tests stay fast."""

from __future__ import annotations

import pytest
import torch

TINY_ENCODER = {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_PREDICTOR = {"embed_dim": 16, "depth": 1, "num_heads": 2}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny():
    """Keyword arguments of a tiny VarJEPA (4x4 patch grid, 32-d latents)."""
    return {"encoder": dict(TINY_ENCODER), "predictor": dict(TINY_PREDICTOR)}


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny GRU/MLP steps: fastest, and immune to other load),
    restored afterwards. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
