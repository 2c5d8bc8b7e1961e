"""Shared pytest fixtures: tiny synthetic rasters (torchgeo habit) and the optional ../shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Two CPU cores in CI: keep torch from oversubscribing them when pytest-xdist is not used.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it are skipped (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (reference data lives beside the project, not in it)")
    return SHARED_DATA
