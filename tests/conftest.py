"""Shared test fixtures: the RVC reference fixture, tiny model configs, quiet torch threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]


def _fixture_dir() -> Path | None:
    for base in (REPO.parent / "shared", Path("/work/shared")):
        candidate = base / "fixtures" / "rvc_tiny_v2_f0"
        if (candidate / "model.pth").is_file():
            return candidate
    return None


FIXTURE_DIR = _fixture_dir()

# The reference fixture's configuration: v2, 40k structure, tiny widths, 4 speakers.
TINY_CONFIG = [1025, 32, 16, 32, 64, 2, 2, 3, 0, "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
               [10, 10, 2, 2], 64, [16, 16, 4, 4], 4, 16, 40000]


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if FIXTURE_DIR is None:
        pytest.skip("shared/fixtures/rvc_tiny_v2_f0 not found beside the repository")
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def fixture_model_path(fixture_dir: Path) -> Path:
    return fixture_dir / "model.pth"
