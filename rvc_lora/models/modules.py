"""Building blocks shared by the RVC synthesizer: weight norm helper, masks, LayerNorm, WN, the flow.

Parameter names follow RVC exactly (``gamma``/``beta``, ``in_layers``, ``res_skip_layers``, ``cond_layer``,
``flows.{0,2,4,6}.pre/enc/post``), weight-normed convolutions use the legacy
``torch.nn.utils.weight_norm`` so their state-dict keys are ``weight_g``/``weight_v``.
"""

from __future__ import annotations

import warnings
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Flip",
    "LayerNorm",
    "ResidualCouplingBlock",
    "ResidualCouplingLayer",
    "WN",
    "sequence_mask",
    "weight_norm",
]

M = TypeVar("M", bound=nn.Module)


def weight_norm(module: M) -> M:
    """Apply the legacy ``torch.nn.utils.weight_norm`` (dim 0) without its deprecation warning.

    The legacy form is what RVC uses; it yields the ``weight_g``/``weight_v`` state-dict keys that every
    RVC checkpoint carries (the parametrization API would name them ``parametrizations.weight.*``).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*weight_norm.*")
        return nn.utils.weight_norm(module)


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean mask ``[B, max_length]``; entry (b, t) is True when ``t < lengths[b]``."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``[B, C, T]`` with parameters named ``gamma`` and ``beta``."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T] -> [B, C, T]``."""
        y = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return y.transpose(1, -1)


class WN(nn.Module):
    """WaveNet-style stack of gated dilated convolutions with optional global conditioning.

    Layer ``i`` uses dilation ``dilation_rate ** i``; ``cond_layer`` maps ``g`` to the
    ``2 * hidden * n_layers`` conditioning channels, sliced per layer.
    """

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WN kernel_size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(
                weight_norm(
                    nn.Conv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation, padding=padding)
                )
            )
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden_channels, out, 1)))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, H, T]``, x_mask ``[B, 1, T]``, g ``[B, gin, 1]`` or None -> ``[B, H, T]``."""
        h = self.hidden_channels
        output = torch.zeros_like(x)
        cond = self.cond_layer(g) if g is not None and self.gin_channels else None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers, strict=True)):
            x_in = in_layer(x)
            if cond is not None:
                x_in = x_in + cond[:, 2 * h * i : 2 * h * (i + 1), :]
            acts = torch.tanh(x_in[:, :h]) * torch.sigmoid(x_in[:, h:])
            res_skip_acts = res_skip(self.drop(acts))
            if i < self.n_layers - 1:
                x = (x + res_skip_acts[:, :h]) * x_mask
                output = output + res_skip_acts[:, h:]
            else:
                output = output + res_skip_acts
        return output * x_mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: the second channel half is shifted by a WN function of the first."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"coupling layer needs an even channel count, got {channels}")
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        """x ``[B, C, T]``, x_mask ``[B, 1, T]`` -> ``[B, C, T]`` (forward or inverse map)."""
        x0, x1 = torch.split(x, [self.half_channels, self.half_channels], dim=1)
        h = self.enc(self.pre(x0) * x_mask, x_mask, g=g)
        mean = self.post(h) * x_mask
        x1 = (x1 - mean) * x_mask if reverse else mean + x1 * x_mask
        return torch.cat([x0, x1], dim=1)


class Flip(nn.Module):
    """Reverse the channel order (no parameters)."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """``[B, C, T] -> [B, C, T]`` with channels reversed."""
        return torch.flip(x, [1])


class ResidualCouplingBlock(nn.Module):
    """RVC's flow: ``n_flows`` × [ResidualCouplingLayer, Flip]; parameters at even indices of ``flows``."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        dilation_rate: int = 1,
        n_layers: int = 3,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
            )
            self.flows.append(Flip())

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        """x ``[B, C, T]``, x_mask ``[B, 1, T]``, g ``[B, gin, 1]`` -> ``[B, C, T]``."""
        flows = reversed(self.flows) if reverse else self.flows
        for flow in flows:
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x
