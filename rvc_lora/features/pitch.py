"""Pitch (f0) extraction behind one interface, on RVC's 10 ms grid at 16 kHz, plus coarse quantisation.

Every extractor maps mono 16 kHz float32 audio [N] to f0 in Hz [p_len] (float32, 0 = unvoiced),
``p_len`` defaulting to ``N // 160``. Frame ``i`` describes the audio around sample ``i * 160``
(frame 0 is centred on the first sample), the convention of RVC's harvest/dio/crepe/rmvpe outputs.
Heavy backends (torch models, pyworld, parselmouth, librosa) are imported only when used.
"""

from __future__ import annotations

import abc
import os

import numpy as np

SAMPLE_RATE = 16000
HOP = 160
F0_MIN = 50.0
F0_MAX = 1100.0
F0_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
F0_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)

METHODS = ("rmvpe", "fcpe", "crepe", "crepe-tiny", "harvest", "dio", "pm", "pyin")


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


def get_pitch_extractor(
    method: str, device: str = "auto", rmvpe_path: str | os.PathLike | None = None, **opts
) -> PitchExtractor:
    """Build the extractor for ``method`` (one of ``METHODS``).

    ``device`` is used by the neural methods (rmvpe, fcpe, crepe*); ``rmvpe_path`` is required for
    "rmvpe" (RVC's ``rmvpe.pt``). ``opts`` are forwarded, e.g. ``filter_radius=3`` for harvest
    (RVC's conversion median filter), ``threshold`` for rmvpe/fcpe, ``batch_size`` for crepe.
    """
    from rvc_lora.features import pitch_methods as pm

    key = method.lower().replace("_", "-")
    if key == "rmvpe":
        return pm.RMVPEPitch(rmvpe_path, device=device, **opts)
    if key == "fcpe":
        return pm.FCPEPitch(device=device, **opts)
    if key in ("crepe", "crepe-full"):
        return pm.CrepePitch("full", device=device, **opts)
    if key == "crepe-tiny":
        return pm.CrepePitch("tiny", device=device, **opts)
    if key in ("harvest", "dio"):
        return pm.WorldPitch(key, **opts)
    if key == "pm":
        return pm.PraatPitch(**opts)
    if key == "pyin":
        return pm.PyinPitch(**opts)
    raise ValueError(f"unknown pitch method {method!r}; choose one of {', '.join(METHODS)}")


def default_pitch_method(rmvpe_path: str | os.PathLike | None) -> str:
    """"rmvpe" when RMVPE weights are configured, else "fcpe" (whose weights ship with torchfcpe)."""
    return "rmvpe" if rmvpe_path else "fcpe"


def coarse_pitch(f0: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch: f0 in Hz [T] -> int64 [T] in 1..255 (1 = unvoiced).

    mel = 1127 ln(1 + f0/700); voiced frames map linearly from [mel(50 Hz), mel(1100 Hz)] onto [1, 255];
    values are clipped to [1, 255] and rounded half-to-even (``np.rint``). Computed in float64.
    """
    f0 = np.asarray(f0, dtype=np.float64)
    f0 = np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)
    mel = 1127.0 * np.log(1.0 + f0 / 700.0)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - F0_MEL_MIN) * 254.0 / (F0_MEL_MAX - F0_MEL_MIN) + 1.0
    mel[mel <= 1] = 1.0
    mel[mel > 255] = 255.0
    return np.rint(mel).astype(np.int64)


def shift_pitch(f0: np.ndarray, semitones: float) -> np.ndarray:
    """Transpose f0 [T] by ``semitones`` (f0 * 2**(semitones/12)); unvoiced zeros stay zero."""
    f0 = np.asarray(f0)
    out_dtype = f0.dtype if np.issubdtype(f0.dtype, np.floating) else np.float32
    return (f0 * 2.0 ** (float(semitones) / 12.0)).astype(out_dtype)
