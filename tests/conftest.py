"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: ``../shared`` next to the repository root: teachers and datasets, never copied in.
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``../shared`` directory; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared test material not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(autouse=True)
def _one_thread():
    """Run every test on one CPU thread (restored afterwards).

    Small models gain nothing from more threads, and on a busy 2-core machine OpenMP
    spin-waiting makes them up to hundreds of times slower.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
