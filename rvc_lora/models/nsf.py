"""Harmonic excitation of the NSF decoder: sine generator and ``SourceModuleHnNSF`` (``m_source``).

Phase math (f0 in Hz per frame, 0 = unvoiced): within a frame every sample advances the phase by
``f0 / sample_rate``; sample ``n`` has phase ``sum_{k <= n} f0[k // upp] / sample_rate``. The phase is
built per frame (``r * (1..upp)``) plus a carry of the previous frames' whole-frame advances with integer
turns removed, which keeps float32 precise on long inputs. Voiced samples get ``0.1 * sin(2 pi phase)``
plus Gaussian noise of std 0.003; unvoiced samples are pure noise of std 0.1 / 3.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SineGen", "SourceModuleHnNSF"]


class SineGen(nn.Module):
    """f0 ``[B, T]`` (Hz) -> noisy sine excitation ``[B, T * upp, harmonic_num + 1]`` (no parameters).

    RNG use (from torch's global generator), in order: one ``torch.rand`` draw of shape
    ``[1, 1, dim]`` (a random initial phase, zeroed for the fundamental, so with ``harmonic_num=0``
    it has no effect), then ``randn`` of the output shape unless ``noise`` is given.
    """

    def __init__(
        self,
        sample_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.harmonic_num = harmonic_num
        self.dim = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold

    def phase(self, f0: torch.Tensor, upp: int, start: torch.Tensor | None = None) -> torch.Tensor:
        """Fundamental phase in turns (fractional part not taken): f0 ``[B, T]`` -> ``[B, T * upp]``.

        ``start`` ``[B]`` (turns): the phase reached before the first sample (default 0), so that a
        signal decoded piece by piece continues the phase of the previous piece (see :meth:`advance`).
        """
        f0 = f0.float().unsqueeze(-1)  # [B, T, 1]
        steps = torch.arange(1, upp + 1, device=f0.device)
        within = f0 / self.sample_rate * steps  # [B, T, upp]: phase reached inside each frame
        # whole-frame advance mapped to [-0.5, 0.5) turns, accumulated over preceding frames, wrapped
        advance = torch.fmod(within[:, :-1, -1:] + 0.5, 1.0) - 0.5
        carry = advance.cumsum(dim=1).fmod(1.0)
        within = within + F.pad(carry, (0, 0, 1, 0))
        if start is not None:
            within = within + start.to(within).reshape(-1, 1, 1)
        return within.reshape(f0.shape[0], -1)

    def advance(self, f0: torch.Tensor, upp: int) -> torch.Tensor:
        """Phase gained over the frames of f0 ``[B, T]`` (Hz), in turns modulo 1: ``[B]`` float64.

        Decoding frames ``[0, T)`` and then frames ``[T, ...)`` with ``start = advance(f0[:, :T])``
        continues the sine exactly where a single decode of both would be.
        """
        return torch.remainder((f0.double() * (upp / self.sample_rate)).sum(dim=1), 1.0)

    @torch.no_grad()
    def forward(self, f0: torch.Tensor, upp: int, noise: torch.Tensor | None = None,
                start: torch.Tensor | None = None) -> torch.Tensor:
        """f0 ``[B, T]`` Hz, upp samples per frame, optional standard-normal ``noise``
        ``[B, T * upp, dim]`` replacing the random draw, optional start phase ``[B]`` (turns)
        -> excitation ``[B, T * upp, dim]``."""
        harmonics = torch.arange(1, self.dim + 1, device=f0.device, dtype=torch.float32)
        rad = self.phase(f0, upp, start).unsqueeze(-1) * harmonics  # [B, N, dim]
        initial = torch.rand(1, 1, self.dim, device=f0.device)
        initial[..., 0] = 0
        sines = torch.sin(2 * math.pi * (rad + initial)) * self.sine_amp
        uv = (f0 > self.voiced_threshold).float().repeat_interleave(upp, dim=1).unsqueeze(-1)  # [B, N, 1]
        if noise is None:
            noise = torch.randn_like(sines)
        elif noise.shape[:2] != sines.shape[:2]:
            raise ValueError(f"noise must have shape {tuple(sines.shape)}, got {tuple(noise.shape)}")
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        return sines * uv + noise_amp * noise.to(sines)


class SourceModuleHnNSF(nn.Module):
    """Sine excitation merged by ``l_linear`` (Linear(dim -> 1)) and tanh: f0 ``[B, T]`` -> ``[B, T*upp, 1]``."""

    def __init__(
        self,
        sample_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        add_noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.l_sin_gen = SineGen(sample_rate, harmonic_num, sine_amp, add_noise_std, voiced_threshold)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def forward(self, f0: torch.Tensor, upp: int, noise: torch.Tensor | None = None,
                start: torch.Tensor | None = None) -> torch.Tensor:
        """f0 ``[B, T]`` Hz (start phase ``[B]`` turns, optional) -> source ``[B, T * upp, 1]`` in the
        dtype of ``l_linear``."""
        sines = self.l_sin_gen(f0, upp, noise=noise, start=start).to(self.l_linear.weight.dtype)
        return torch.tanh(self.l_linear(sines))
