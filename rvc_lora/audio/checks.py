"""Cheap sanity checks on decoded audio, reported to the user rather than raised."""

from __future__ import annotations

import numpy as np

FULL_SCALE = 0.999
SILENCE_PEAK = 1e-4  # about -80 dBFS
LONG_SECONDS = 20 * 60.0
SHORT_SECONDS = 1.0


def inspect_audio(x: np.ndarray, sr: int) -> list[str]:
    """Return human-readable problems found in the mono signal ``x`` [T] at ``sr`` Hz (empty if fine).

    Reports: empty, non-finite samples, all silent, clipping (samples at or above full scale), very
    short (< 1 s), very long (> 20 min) and a large DC offset.
    """
    x = np.asarray(x)
    problems: list[str] = []
    if x.size == 0:
        return ["empty (no samples)"]
    finite = np.isfinite(x)
    n_bad = int(x.size - np.count_nonzero(finite))
    if n_bad:
        problems.append(f"{n_bad} non-finite samples (NaN/inf)")
        x = np.where(finite, x, 0.0)
    peak = float(np.max(np.abs(x)))
    duration = x.shape[0] / float(sr)
    if peak < SILENCE_PEAK:
        problems.append("all silent")
    n_clip = int(np.count_nonzero(np.abs(x) >= FULL_SCALE))
    if n_clip:
        problems.append(f"clipped ({n_clip} samples at full scale)")
    if duration < SHORT_SECONDS:
        problems.append(f"very short ({duration:.2f} s)")
    if duration > LONG_SECONDS:
        problems.append(f"very long ({duration / 60.0:.1f} min)")
    dc = float(np.mean(x))
    if peak >= SILENCE_PEAK and abs(dc) > 0.1:
        problems.append(f"large DC offset ({dc:+.3f})")
    return problems
