"""RVC's linear spectrogram and log-mel spectrogram (``infer/lib/train/mel_processing.py`` semantics).

- spectrogram: reflect-pad ``(n_fft - hop) // 2`` on both sides, STFT with a periodic Hann window of
  ``win`` samples, ``center=False``, one-sided; magnitude ``sqrt(re^2 + im^2 + 1e-6)``.
- mel: librosa's filterbank (Slaney mel scale and Slaney area normalisation) times the magnitude,
  then ``log(clamp(x, min=1e-5))``.
"""

from __future__ import annotations

import librosa
import torch
import torch.nn.functional as F

from .configs import MelSettings

__all__ = ["mel_filterbank", "mel_spectrogram", "spec_to_mel", "spectrogram"]

_WINDOWS: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}
_FILTERBANKS: dict[tuple, torch.Tensor] = {}


def _hann(win: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = (win, str(device), dtype)
    if key not in _WINDOWS:
        _WINDOWS[key] = torch.hann_window(win, device=device, dtype=dtype)
    return _WINDOWS[key]


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """librosa's Slaney mel filterbank as a tensor ``[n_mels, n_fft // 2 + 1]`` (cached)."""
    key = (sample_rate, n_fft, n_mels, float(fmin), None if fmax is None else float(fmax), str(device), dtype)
    if key not in _FILTERBANKS:
        basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        _FILTERBANKS[key] = torch.from_numpy(basis).to(device=device, dtype=dtype)
    return _FILTERBANKS[key]


def spectrogram(wave: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """Linear magnitude spectrogram.

    Args:
        wave: ``[B, T]`` float waveform in [-1, 1] (``[T]`` is accepted and gives ``[n_fft//2+1, frames]``).
    Returns:
        ``[B, n_fft // 2 + 1, frames]`` with ``frames = (T + 2 * ((n_fft - hop) // 2) - n_fft) // hop + 1``.
    """
    squeeze = wave.dim() == 1
    if squeeze:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise ValueError(f"spectrogram expects a [B, T] waveform, got shape {tuple(wave.shape)}")
    pad = (n_fft - hop) // 2
    padded = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    stft = torch.stft(
        padded,
        n_fft,
        hop_length=hop,
        win_length=win,
        window=_hann(win, padded.device, padded.dtype),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    mag = torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + 1e-6)
    return mag.squeeze(0) if squeeze else mag


def spec_to_mel(
    spec: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> torch.Tensor:
    """Log-mel from a linear magnitude spectrogram ``[B, n_fft//2+1, frames]`` -> ``[B, n_mels, frames]``."""
    basis = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, spec.device, spec.dtype)
    return torch.log(torch.clamp(torch.matmul(basis, spec), min=1e-5))


def mel_spectrogram(wave: torch.Tensor, settings: MelSettings) -> torch.Tensor:
    """Log-mel spectrogram of ``wave`` ``[B, T]`` with RVC's settings -> ``[B, n_mels, frames]``."""
    spec = spectrogram(wave, settings.n_fft, settings.hop, settings.win)
    return spec_to_mel(spec, settings.sample_rate, settings.n_fft, settings.n_mels, settings.fmin, settings.fmax)
