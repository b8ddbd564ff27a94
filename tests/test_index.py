"""faiss retrieval index: RVC sizing and naming, neighbour search, blending semantics, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rvc_lora.data.index import ivf_lists, load_index, save_index, train_index
from rvc_lora.utils import RVCLoraError


def _clusters(n_per: int = 200, dim: int = 16, n_clusters: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32) * 10
    labels = np.repeat(np.arange(n_clusters), n_per)
    feats = centres[labels] + rng.normal(scale=0.1, size=(labels.size, dim)).astype(np.float32)
    return feats.astype(np.float32), labels, centres


def test_ivf_sizing_follows_rvc() -> None:
    assert ivf_lists(1000) == min(int(16 * 1000 ** 0.5), 1000 // 39) == 25
    assert ivf_lists(100_000) == min(int(16 * 100_000 ** 0.5), 100_000 // 39) == 2564
    assert ivf_lists(10) == 1 and ivf_lists(1) == 1


def test_saved_file_name_and_roundtrip(tmp_path: Path) -> None:
    feats, _, _ = _clusters()
    index = train_index(feats)
    path = save_index(index, tmp_path, "alice", "v2")
    assert path.name == "added_IVF25_Flat_nprobe_1_alice_v2.index"
    loaded = load_index(path)
    assert loaded.big_npy.shape == feats.shape
    # the stored vectors are the training rows (shuffled), nothing lost or altered
    np.testing.assert_allclose(np.sort(loaded.big_npy, axis=0), np.sort(feats, axis=0))
    # RVC accepts the "trained_" name and reads the "added_" file instead
    assert load_index(tmp_path / path.name.replace("added", "trained")).path == path
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_search_finds_neighbours_in_the_right_cluster(tmp_path: Path) -> None:
    feats, labels, centres = _clusters()
    loaded = load_index(save_index(train_index(feats), tmp_path, "x", "v1"))
    rng = np.random.default_rng(1)
    queries = centres + rng.normal(scale=0.1, size=centres.shape).astype(np.float32)
    _, ix = loaded.search(queries, k=8)
    for cluster, row in enumerate(ix):
        # nprobe 1 still finds same-cluster points because the clusters are well separated
        hit = loaded.big_npy[row]
        assert np.linalg.norm(hit - centres[cluster], axis=1).max() < 1.5


def test_blend_rate_zero_and_one(tmp_path: Path) -> None:
    feats, _, centres = _clusters()
    loaded = load_index(save_index(train_index(feats), tmp_path, "x", "v1"))
    rng = np.random.default_rng(2)
    query = (centres[[0, 3, 1]] + rng.normal(scale=0.3, size=(3, feats.shape[1]))).astype(np.float32)
    np.testing.assert_array_equal(loaded.blend(query, 0.0), query)

    score, ix = loaded.search(query, k=8)
    w = (1.0 / score) ** 2
    w /= w.sum(axis=1, keepdims=True)
    retrieved = (loaded.big_npy[ix] * w[:, :, None]).sum(axis=1)
    np.testing.assert_allclose(loaded.blend(query, 1.0), retrieved, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.blend(query, 0.25), 0.25 * retrieved + 0.75 * query, rtol=1e-5, atol=1e-5)
    # retrieval pulls the noisy queries towards their cluster centres
    assert (np.linalg.norm(retrieved - centres[[0, 3, 1]], axis=1)
            < np.linalg.norm(query - centres[[0, 3, 1]], axis=1)).all()


def test_tiny_index_clamps_k(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    loaded = load_index(save_index(train_index(feats), tmp_path, "t", "v1"))
    import faiss

    assert faiss.extract_index_ivf(loaded.index).nlist == 1
    out = loaded.blend(feats + 0.01, 1.0)
    assert out.shape == feats.shape and np.isfinite(out).all()
    # a query equal to a stored row retrieves exactly that row
    np.testing.assert_allclose(loaded.blend(feats[:2], 1.0), feats[:2], atol=1e-6)


def test_dim_mismatch_names_file_and_dims(tmp_path: Path) -> None:
    feats, _, _ = _clusters(dim=16)
    path = save_index(train_index(feats), tmp_path, "x", "v2")
    loaded = load_index(path)
    with pytest.raises(RVCLoraError, match=r"16-dim.*12-dim") as info:
        loaded.blend(np.zeros((4, 12), np.float32), 0.5)
    assert path.name in str(info.value)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(RVCLoraError, match="not found"):
        load_index(tmp_path / "missing.index")
    with pytest.raises(RVCLoraError, match="NaN"):
        train_index(np.full((50, 4), np.nan, np.float32))


def test_large_inputs_are_reduced_with_kmeans(monkeypatch: pytest.MonkeyPatch) -> None:
    import rvc_lora.data.index as index_mod

    monkeypatch.setattr(index_mod, "KMEANS_THRESHOLD", 300)
    monkeypatch.setattr(index_mod, "KMEANS_CENTRES", 40)
    feats, _, _ = _clusters(n_per=100)  # 500 rows > 300 -> 40 centres
    index = train_index(feats)
    assert index.ntotal == 40
