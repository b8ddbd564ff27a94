"""RVC's faiss retrieval index: training from content features, RVC file naming, and blending.

Training follows RVC (reference §6): rows shuffled; more than 200 000 rows are reduced to 10 000
k-means centres; ``n_ivf = min(int(16 * sqrt(N)), N // 39)`` (at least 1); factory ``"IVF{n},Flat"``,
``nprobe = 1``; vectors added in batches of 8192. The file is ``added_IVF{n}_Flat_nprobe_1_{exp}_{ver}.index``.

Retrieval: for each frame, the k = 8 nearest stored vectors (faiss L2 = squared distances) are mixed
with weights ``(1 / d)^2`` normalised per frame, and ``out = retrieved * rate + feats * (1 - rate)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_lora.utils import RVCLoraError, atomic_write

KMEANS_THRESHOLD = 200_000
KMEANS_CENTRES = 10_000
ADD_BATCH = 8192


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
        raise RVCLoraError("the retrieval index needs faiss: pip install faiss-cpu") from err
    return faiss


def ivf_lists(num_rows: int) -> int:
    """RVC's inverted-list count for ``num_rows`` training rows: min(int(16 sqrt N), N // 39), >= 1."""
    return max(1, min(int(16 * math.sqrt(num_rows)), num_rows // 39))


def reduce_rows(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """K-means (10 000 centres) for more than 200 000 rows, like RVC; smaller inputs pass through."""
    if features.shape[0] <= KMEANS_THRESHOLD:
        return features
    from sklearn.cluster import MiniBatchKMeans

    kmeans = MiniBatchKMeans(
        n_clusters=KMEANS_CENTRES, batch_size=256 * (os.cpu_count() or 1), init="random",
        random_state=seed, n_init=1, compute_labels=False,
    )
    return kmeans.fit(features).cluster_centers_.astype(np.float32)


def train_index(features: np.ndarray, seed: int = 0):
    """Train an RVC-style ``IVF{n},Flat`` index on content features [N, D] float32; return it (populated).

    Rows are shuffled with ``seed``; large inputs are k-means reduced first (see module doc).
    """
    faiss = _faiss()
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise RVCLoraError(f"index training needs a non-empty [N, D] feature matrix, got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise RVCLoraError("index training features contain NaN or infinite values")
    rng = np.random.default_rng(seed)
    feats = feats[rng.permutation(feats.shape[0])]
    feats = np.ascontiguousarray(reduce_rows(feats, seed))
    n_ivf = ivf_lists(feats.shape[0])
    index = faiss.index_factory(feats.shape[1], f"IVF{n_ivf},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(feats)
    for start in range(0, feats.shape[0], ADD_BATCH):
        index.add(feats[start:start + ADD_BATCH])
    return index


def index_file_name(n_ivf: int, exp_name: str, version: str) -> str:
    """RVC's name for a populated index: ``added_IVF{n}_Flat_nprobe_1_{exp}_{ver}.index``."""
    return f"added_IVF{n_ivf}_Flat_nprobe_1_{exp_name}_{version}.index"


def save_index(index, out_dir: str | os.PathLike, exp_name: str, version: str) -> Path:
    """Write ``index`` into ``out_dir`` under RVC's file name (atomically); return the path."""
    faiss = _faiss()
    n_ivf = faiss.extract_index_ivf(index).nlist
    path = Path(out_dir) / index_file_name(n_ivf, exp_name, version)
    with atomic_write(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path


@dataclass
class RetrievalIndex:
    """A loaded index plus all its vectors (``big_npy`` [ntotal, D] float32), as RVC keeps them."""

    index: object
    big_npy: np.ndarray
    path: Path

    @property
    def dim(self) -> int:
        return int(self.big_npy.shape[1])

    def search(self, feats: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """faiss search: [T, D] -> (squared distances [T, k'], ids [T, k']), k' = min(k, ntotal)."""
        feats = self._check(feats)
        k = max(1, min(k, self.big_npy.shape[0]))
        return self.index.search(feats, k)

    def blend(self, feats: np.ndarray, index_rate: float, k: int = 8) -> np.ndarray:
        """Mix each frame with its retrieved neighbours: [T, D] -> [T, D] (input dtype kept).

        ``index_rate`` 0 returns ``feats`` unchanged; 1 returns the pure inverse-distance mix.
        """
        if not 0.0 <= index_rate <= 1.0:
            raise RVCLoraError(f"index_rate must be within [0, 1], got {index_rate}")
        if index_rate == 0.0:
            self._check(feats)
            return feats
        query = self._check(feats)
        score, ix = self.search(query, k)
        valid = ix >= 0  # faiss marks missing neighbours with -1 (tiny IVF lists)
        with np.errstate(divide="ignore"):
            weight = np.where(valid, np.square(1.0 / np.maximum(score, 0.0)), 0.0)
        exact = valid & (score <= 0.0)  # an exact hit: infinite weight -> take the hit(s) only
        rows = exact.any(axis=1)
        weight[rows] = exact[rows].astype(weight.dtype)
        total = weight.sum(axis=1, keepdims=True)
        empty = total[:, 0] <= 0.0
        total[empty] = 1.0
        weight = weight / total
        retrieved = np.sum(self.big_npy[np.where(valid, ix, 0)] * weight[:, :, None], axis=1)
        retrieved[empty] = query[empty]
        out = retrieved * index_rate + query * (1.0 - index_rate)
        return out.astype(np.asarray(feats).dtype, copy=False)

    def _check(self, feats: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(np.asarray(feats, dtype=np.float32))
        if arr.ndim != 2:
            raise RVCLoraError(f"index query must be [frames, dim], got shape {arr.shape}")
        if arr.shape[1] != self.dim:
            raise RVCLoraError(
                f"{self.path}: index holds {self.dim}-dim features but the model produces {arr.shape[1]}-dim "
                "features (v1 indexes are 256-dim, v2 768-dim); use the index built for this model version"
            )
        return arr


def load_index(path: str | os.PathLike) -> RetrievalIndex:
    """Read an RVC / rvc-lora ``.index`` file. A path containing "trained" is read as the "added" file."""
    faiss = _faiss()
    path = Path(path)
    path = path.with_name(path.name.replace("trained", "added"))
    if not path.is_file():
        raise RVCLoraError(f"index file not found: {path}")
    try:
        index = faiss.read_index(str(path))
    except Exception as err:  # faiss raises RuntimeError with a C++ message
        raise RVCLoraError(f"{path}: not a readable faiss index ({err})") from err
    if index.ntotal == 0:
        raise RVCLoraError(f"{path}: the index is empty (a 'trained_' file without vectors?)")
    big_npy = index.reconstruct_n(0, index.ntotal)
    return RetrievalIndex(index=index, big_npy=np.asarray(big_npy, dtype=np.float32), path=path)
