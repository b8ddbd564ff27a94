"""RVC's multi-period discriminators (v1: scale + periods 2,3,5,7,11,17; v2 adds 23 and 37).

All convolutions are weight-normed (``weight_g``/``weight_v`` keys); index 0 of ``discriminators`` is the
scale (1-D) discriminator. LeakyReLU 0.1 follows every conv; the feature maps are each activated conv
output plus the ``conv_post`` output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .modules import weight_norm

__all__ = [
    "DiscriminatorP",
    "DiscriminatorS",
    "MultiPeriodDiscriminator",
    "PERIODS_V1",
    "PERIODS_V2",
    "build_discriminator",
]

LRELU_SLOPE = 0.1
PERIODS_V1 = (2, 3, 5, 7, 11, 17)
PERIODS_V2 = (2, 3, 5, 7, 11, 17, 23, 37)


def _narrow(channels: int, divisor: int) -> int:
    return channels if channels == 1 else max(1, channels // divisor)


class DiscriminatorS(nn.Module):
    """1-D discriminator on the raw waveform ``[B, 1, T]``.

    ``divisor`` > 1 narrows every hidden layer (and its groups) by that factor: RVC uses 1; smaller
    discriminators serve tiny demo and test models.
    """

    def __init__(self, divisor: int = 1) -> None:
        super().__init__()
        specs = [  # (in, out, kernel, stride, groups, padding)
            (1, 16, 15, 1, 1, 7),
            (16, 64, 41, 4, 4, 20),
            (64, 256, 41, 4, 16, 20),
            (256, 1024, 41, 4, 64, 20),
            (1024, 1024, 41, 4, 256, 20),
            (1024, 1024, 5, 1, 1, 2),
        ]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(_narrow(i, divisor), _narrow(o, divisor), k, s, groups=max(1, g // divisor),
                                  padding=p))
            for i, o, k, s, g, p in specs
        )
        self.conv_post = weight_norm(nn.Conv1d(_narrow(1024, divisor), 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x ``[B, 1, T]`` -> (scores ``[B, N]``, feature maps)."""
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class DiscriminatorP(nn.Module):
    """2-D discriminator on the waveform folded by ``period``: ``[B, 1, T] -> [B, 1, T/p, p]``."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, divisor: int = 1) -> None:
        super().__init__()
        self.period = period
        pad = (kernel_size - 1) // 2
        chans = [_narrow(c, divisor) for c in (1, 32, 128, 512, 1024)]
        convs = [
            nn.Conv2d(chans[i], chans[i + 1], (kernel_size, 1), (stride, 1), padding=(pad, 0)) for i in range(4)
        ]
        convs.append(nn.Conv2d(chans[4], chans[4], (kernel_size, 1), 1, padding=(pad, 0)))
        self.convs = nn.ModuleList(weight_norm(c) for c in convs)
        self.conv_post = weight_norm(nn.Conv2d(chans[4], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x ``[B, 1, T]`` -> (scores ``[B, N]``, feature maps); T is reflect-padded to a multiple of p."""
        b, c, t = x.shape
        if t % self.period:
            n_pad = self.period - t % self.period
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class MultiPeriodDiscriminator(nn.Module):
    """[DiscriminatorS] + one DiscriminatorP per period, keys ``discriminators.{i}.*``."""

    def __init__(self, periods: Sequence[int] = PERIODS_V1, divisor: int = 1) -> None:
        super().__init__()
        self.periods = tuple(periods)
        self.divisor = divisor
        self.discriminators = nn.ModuleList(
            [DiscriminatorS(divisor), *(DiscriminatorP(p, divisor=divisor) for p in self.periods)]
        )

    def forward(
        self, y: torch.Tensor, y_hat: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """Real y and generated y_hat ``[B, 1, T]`` -> (real_outs, fake_outs, real_fmaps, fake_fmaps)."""
        real_outs, fake_outs, real_fmaps, fake_fmaps = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            f, ff = d(y_hat)
            real_outs.append(r)
            fake_outs.append(f)
            real_fmaps.append(fr)
            fake_fmaps.append(ff)
        return real_outs, fake_outs, real_fmaps, fake_fmaps


def build_discriminator(version: str, divisor: int = 1) -> MultiPeriodDiscriminator:
    """RVC's discriminator for ``version`` "v1" (6 periods) or "v2" (8 periods).

    ``divisor`` narrows the hidden channels (1 = RVC's sizes, the only width pretrained files have).
    """
    if divisor < 1:
        raise ValueError(f"discriminator divisor must be >= 1, got {divisor}")
    if version == "v1":
        return MultiPeriodDiscriminator(PERIODS_V1, divisor)
    if version == "v2":
        return MultiPeriodDiscriminator(PERIODS_V2, divisor)
    raise ValueError(f"unknown RVC version {version!r}; expected 'v1' or 'v2'")
