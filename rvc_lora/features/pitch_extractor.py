"""The pitch extractor interface and RVC's pitch grid: mono 16 kHz audio [N] -> f0 in Hz [p_len] per 10 ms.

Every extractor maps mono 16 kHz float32 audio [N] to f0 in Hz [p_len] (float32, 0 = unvoiced),
``p_len`` defaulting to ``N // 160``. Frame ``i`` describes the audio around sample ``i * 160``
(frame 0 is centred on the first sample), the convention of RVC's harvest/dio/crepe/rmvpe outputs.
"""

from __future__ import annotations

import abc

import numpy as np

SAMPLE_RATE = 16000
HOP = 160  # samples per f0 / synthesis frame at 16 kHz (10 ms)
FRAMES_PER_SECOND = SAMPLE_RATE // HOP
F0_MIN = 50.0
F0_MAX = 1100.0


def fit_length(f0: np.ndarray, p_len: int) -> np.ndarray:
    """Trim or zero-pad ``f0`` [T] at the end to exactly ``p_len`` frames (RVC keeps the first frames)."""
    f0 = np.asarray(f0, dtype=np.float32).reshape(-1)
    if f0.shape[0] >= p_len:
        return f0[:p_len].copy()
    return np.pad(f0, (0, p_len - f0.shape[0]))


class PitchExtractor(abc.ABC):
    """Base class: ``extractor(audio16k, p_len=None) -> f0 [p_len]`` in Hz (float32, 0 = unvoiced)."""

    name: str = ""

    def __call__(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray:
        x = np.asarray(audio16k, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"{self.name}: expected mono audio [N], got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{self.name}: audio contains NaN or infinite samples")
        if p_len is None:
            p_len = x.shape[0] // HOP
        if p_len < 0:
            raise ValueError(f"{self.name}: p_len must be >= 0, got {p_len}")
        if x.shape[0] == 0 or p_len == 0:
            return np.zeros(p_len, dtype=np.float32)
        f0 = self._extract(x, int(p_len))
        f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        f0[f0 < 0] = 0.0
        return fit_length(f0, int(p_len))

    def load(self) -> None:
        """Read the method's weights now, so a bad weights file fails before any audio is processed
        (methods with weights otherwise load them on first use; the others have nothing to load)."""
        return None

    @abc.abstractmethod
    def _extract(self, audio16k: np.ndarray, p_len: int) -> np.ndarray:
        """Raw f0 [~N // 160 + 1] for finite mono float32 audio [N]; ``__call__`` fits it to ``p_len``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
