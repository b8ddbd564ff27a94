"""Shared test fixtures: the RVC reference fixture, tiny model configs, quiet torch threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Reference vectors computed by the original RVC code (data only; copied from the project's shared/).
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "rvc_tiny_v2_f0"


# The reference fixture's configuration: v2, 40k structure, tiny widths, 4 speakers.
TINY_CONFIG = [1025, 32, 16, 32, 64, 2, 2, 3, 0, "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
               [10, 10, 2, 2], 64, [16, 16, 4, 4], 4, 16, 40000]


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def fixture_model_path(fixture_dir: Path) -> Path:
    return fixture_dir / "model.pth"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-model tests: two threads on a shared 2-core machine are many
    times slower than one. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
