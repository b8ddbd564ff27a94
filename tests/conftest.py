"""Shared test fixtures: the RVC reference fixture, tiny model configs, quiet torch threads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Reference vectors computed by the original RVC code (data only; copied from the project's shared/).
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "rvc_tiny_v2_f0"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def fixture_model_path(fixture_dir: Path) -> Path:
    return fixture_dir / "model.pth"


@pytest.fixture(scope="session")
def tiny_hubert_v2(tmp_path_factory) -> Path:
    """A random tiny HuBERT (fairseq layout) giving 768-wide v2 features, shared by the whole session."""
    from rvc_lora.demo.random_hubert import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("hubert_v2") / "hubert.pt", size="tiny", embed_dim=768)


# Reference data computed by the original RVC conversion pipeline (copied from the project's shared/;
# see its README). HuBERT-base and RMVPE weights are defined there by a formula (tests/reference_weights.py)
# and generated once per session, here.
RVC_CONVERT_DIR = Path(__file__).resolve().parent / "fixtures" / "rvc_convert"


@dataclass(frozen=True)
class FormulaFiles:
    """Files written from formula weights, plus what the generator produced (digest, mismatching entries)."""

    paths: dict[str, Path]
    sha256_all: str
    expected_sha256_all: str
    mismatches: tuple[str, ...]


@pytest.fixture(scope="session")
def rvc_convert_dir() -> Path:
    return RVC_CONVERT_DIR


@pytest.fixture(scope="session")
def formula_hubert_base(tmp_path_factory) -> FormulaFiles:
    """HuBERT-base from the formula, as RVC's fairseq ``hubert_base.pt`` and as a Hugging Face folder."""
    from reference_weights import FormulaWeights, write_hubert_fairseq, write_hubert_hf

    weights = FormulaWeights(RVC_CONVERT_DIR / "hubert_layout.json")
    folder = tmp_path_factory.mktemp("formula_hubert")
    paths = {"fairseq": write_hubert_fairseq(weights, folder / "hubert_base.pt"),
             "hf": write_hubert_hf(weights, folder / "hf")}
    return FormulaFiles(paths, weights.sha256_all, weights.layout["sha256_all"], tuple(weights.mismatches))


@pytest.fixture(scope="session")
def formula_rmvpe(tmp_path_factory) -> FormulaFiles:
    """Full-size RMVPE from the formula, saved like RVC's ``rmvpe.pt`` (fp16 floats)."""
    from reference_weights import FormulaWeights, write_rmvpe

    weights = FormulaWeights(RVC_CONVERT_DIR / "rmvpe_layout.json")
    path = write_rmvpe(weights, tmp_path_factory.mktemp("formula_rmvpe") / "rmvpe.pt")
    return FormulaFiles({"rmvpe": path}, weights.sha256_all, weights.layout["sha256_all"],
                        tuple(weights.mismatches))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-model tests: two threads on a shared 2-core machine are many
    times slower than one. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
