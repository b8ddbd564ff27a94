"""Sample-rate conversion with soxr, matching librosa's default resampler (``soxr_hq``)."""

from __future__ import annotations

import math

import numpy as np


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono signal ``x`` [T] (or [T, C]) from ``orig_sr`` to ``target_sr``.

    Uses soxr's high-quality preset, the same filter ``librosa.resample`` uses by default, and fixes the
    output length to ``ceil(T * target_sr / orig_sr)`` as librosa does. Returns ``x`` unchanged when the
    rates are equal. The dtype of ``x`` is kept (float32 stays float32).
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return x
    import soxr

    x = np.asarray(x)
    if x.shape[0] == 0:
        return x.copy()
    y = soxr.resample(x, orig_sr, target_sr, quality="HQ")
    n_out = int(math.ceil(x.shape[0] * float(target_sr) / orig_sr))
    if y.shape[0] > n_out:
        y = y[:n_out]
    elif y.shape[0] < n_out:
        pad = [(0, n_out - y.shape[0])] + [(0, 0)] * (y.ndim - 1)
        y = np.pad(y, pad)
    return np.asarray(y, dtype=x.dtype)
