"""The formula weights of the ``rvc_convert`` reference (tests/reference_weights.py) are the reference's:
the README's test vectors, and every tensor's SHA-256 as listed in the layout files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from reference_weights import entry_tensor, splitmix64, state0

from tests.conftest import RVC_CONVERT_DIR


@pytest.mark.parametrize("layout", ["hubert_layout.json", "rmvpe_layout.json"])
def test_generator_reproduces_the_readme_test_vectors(layout):
    data = json.loads((RVC_CONVERT_DIR / layout).read_text(encoding="utf-8"))
    entries = {e["name"]: e for e in data["entries"]}
    for vector in data["test_vectors"]:
        start = state0(vector["name"], data["recipe_seed"])
        assert start == vector["state0"] == data["recipe_seed"] * 2**32 + vector["crc32"]
        assert [f"{int(z):#018x}" for z in splitmix64(start, 1, 3)] == vector["z"]
        values = entry_tensor(entries[vector["name"]], data["recipe_seed"]).reshape(-1)
        assert values.dtype == np.dtype(vector["dtype"])
        np.testing.assert_array_equal(values[:len(vector["values"])],
                                      np.asarray(vector["values"]).astype(vector["dtype"]))


def test_hubert_base_formula_weights_have_the_layout_digests(formula_hubert_base):
    assert formula_hubert_base.mismatches == ()
    assert formula_hubert_base.sha256_all == formula_hubert_base.expected_sha256_all


def test_rmvpe_formula_weights_have_the_layout_digests(formula_rmvpe):
    assert formula_rmvpe.mismatches == ()
    assert formula_rmvpe.sha256_all == formula_rmvpe.expected_sha256_all
