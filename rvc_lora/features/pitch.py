"""Pitch (f0): an extractor by method name, RVC's coarse quantisation, and transposition.

The interface and the 10 ms grid at 16 kHz are in ``pitch_extractor``; the methods in ``pitch_methods``.
Heavy backends (torch models, pyworld, parselmouth, librosa) are imported only when used.
"""

from __future__ import annotations

import os

import numpy as np

from rvc_lora.features.pitch_extractor import F0_MAX, F0_MIN, HOP, SAMPLE_RATE, PitchExtractor

__all__ = ["F0_MAX", "F0_MEL_MAX", "F0_MEL_MIN", "F0_MIN", "HOP", "METHODS", "SAMPLE_RATE", "PitchExtractor",
           "coarse_pitch", "default_pitch_method", "get_pitch_extractor", "shift_pitch"]

F0_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
F0_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)

METHODS = ("rmvpe", "fcpe", "crepe", "crepe-tiny", "harvest", "dio", "pm", "pyin")


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
