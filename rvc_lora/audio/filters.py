"""High-pass filtering used before slicing (causal, like RVC's preprocessing) and conversion (zero-phase)."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=16)
def _butter_highpass(cutoff: float, order: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import signal

    b, a = signal.butter(N=order, Wn=cutoff, btype="high", fs=sr)
    return b, a


def highpass(
    x: np.ndarray, sr: int, cutoff: float = 48.0, order: int = 5, zero_phase: bool = False
) -> np.ndarray:
    """Butterworth high-pass of ``x`` [T] at ``cutoff`` Hz; returns float32 [T].

    ``zero_phase=False`` runs the filter forward only (scipy ``lfilter``), as RVC's training
    preprocessing does; ``zero_phase=True`` runs it forward and backward (``filtfilt``), as RVC's
    conversion pipeline does (doubling the effective order, no phase shift).
    """
    from scipy import signal

    if cutoff <= 0 or cutoff >= sr / 2:
        raise ValueError(f"high-pass cutoff {cutoff} Hz must lie in (0, {sr / 2}) for sample rate {sr}")
    b, a = _butter_highpass(float(cutoff), int(order), int(sr))
    x = np.asarray(x, dtype=np.float64)
    if zero_phase:
        padlen = 3 * max(len(a), len(b))
        if x.shape[-1] <= padlen:
            # filtfilt needs more samples than its edge padding; fall back to the causal filter.
            y = signal.lfilter(b, a, x)
        else:
            y = signal.filtfilt(b, a, x)
    else:
        y = signal.lfilter(b, a, x)
    return y.astype(np.float32)
