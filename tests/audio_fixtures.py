"""Synthetic audio for the audio and pitch tests: harmonic tones with known f0, glides, silence, noise,
and deliberately broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def harmonic_tone(f0: float | np.ndarray, duration: float, sr: int = 16000, n_harmonics: int = 6,
                  amplitude: float = 0.5) -> np.ndarray:
    """Sum of harmonics with 1/k amplitudes; ``f0`` scalar or per-sample [T] array (Hz). float32 [T]."""
    n = int(round(duration * sr))
    freq = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, n_harmonics + 1))
    x = x / np.max(np.abs(x)) * amplitude
    return x.astype(np.float32)


def glide(f_start: float = 150.0, f_end: float = 300.0, duration: float = 1.0, sr: int = 16000,
          **kw) -> tuple[np.ndarray, np.ndarray]:
    """Exponential (linear in cents) glide; returns (audio [T], true f0 per sample [T])."""
    n = int(round(duration * sr))
    t = np.arange(n) / sr
    f = f_start * (f_end / f_start) ** (t / duration)
    return harmonic_tone(f, duration, sr, **kw), f


def true_f0_on_grid(f_per_sample: np.ndarray, p_len: int, hop: int = 160) -> np.ndarray:
    """The true f0 sampled at frame centres ``i * hop`` (RVC's grid)."""
    idx = np.minimum(np.arange(p_len) * hop, len(f_per_sample) - 1)
    return f_per_sample[idx]


def silence(duration: float, sr: int = 16000) -> np.ndarray:
    return np.zeros(int(round(duration * sr)), dtype=np.float32)


def noise(duration: float, sr: int = 16000, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(round(duration * sr))) * amplitude).astype(np.float32)


def cents_error(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|1200 log2(estimate / truth)| on frames where both are voiced."""
    voiced = (estimate > 0) & (truth > 0)
    return np.abs(1200 * np.log2(estimate[voiced] / truth[voiced]))


def write_garbage(path: Path) -> Path:
    path.write_bytes(b"this is not audio at all\n" * 40)
    return path


def write_truncated_wav(path: Path, keep_fraction: float = 0.5, sr: int = 16000) -> Path:
    """A valid float WAV cut short after ``keep_fraction`` of its bytes (header claims more data)."""
    full = path.with_suffix(".full.wav")
    sf.write(full, harmonic_tone(220.0, 0.5, sr), sr, subtype="FLOAT")
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def write_header_only_wav(path: Path, sr: int = 16000) -> Path:
    """A WAV whose header is complete but holds zero frames."""
    sf.write(path, np.zeros(0, dtype=np.float32), sr, subtype="FLOAT")
    return path


def write_nan_wav(path: Path, sr: int = 16000) -> Path:
    x = harmonic_tone(220.0, 0.2, sr)
    x[100] = np.nan
    x[200] = np.inf
    sf.write(path, x, sr, subtype="FLOAT")
    return path


def tone_with_noise_burst(duration: float, sr: int = 16000, f0: float = 220.0, seed: int = 0) -> np.ndarray:
    """A harmonic tone whose middle 15% is a noise burst: voiced and unvoiced frames. float32 [T]."""
    x = harmonic_tone(f0, duration, sr, n_harmonics=3, amplitude=0.4)
    n = x.shape[0]
    start, stop = int(0.4 * n), int(0.55 * n)
    x[start:stop] = noise((stop - start) / sr, sr, amplitude=0.05, seed=seed)[:stop - start]
    return x
