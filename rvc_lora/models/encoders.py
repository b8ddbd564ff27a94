"""RVC's prior (content) encoder ``enc_p`` and posterior (spectrogram) encoder ``enc_q``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attentions import Encoder
from .modules import WN, sequence_mask

__all__ = ["PosteriorEncoder", "TextEncoder"]


class TextEncoder(nn.Module):
    """Content features (+ coarse pitch) -> prior mean and log-std.

    ``emb_phone`` Linear(in -> hidden), ``emb_pitch`` Embedding(256, hidden) when ``f0``; the sum is
    scaled by sqrt(hidden), passed through LeakyReLU(0.1) and the relative-attention ``encoder``;
    ``proj`` maps to ``2 * out_channels`` stats.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        f0: bool = True,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.emb_phone = nn.Linear(in_channels, hidden_channels)
        if f0:
            self.emb_pitch = nn.Embedding(256, hidden_channels)
        self.f0 = f0
        self.encoder = Encoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, float(p_dropout))
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, lengths: torch.Tensor, skip_head: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phone ``[B, T, in]``, pitch ``[B, T]`` long (1..255) or None, lengths ``[B]``
        -> (m ``[B, out, T']``, logs ``[B, out, T']``, x_mask ``[B, 1, T']``), ``T' = T - skip_head``.

        ``skip_head`` (streaming): the attention encoder still sees all ``T`` frames, then the first
        ``skip_head`` frames are dropped before the projection.
        """
        x = self.emb_phone(phone)
        if self.f0:
            if pitch is None:
                raise ValueError("this text encoder was built with f0=True and needs a pitch tensor")
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * math.sqrt(self.hidden_channels), 0.1)
        x = x.transpose(1, -1)  # [B, hidden, T]
        x_mask = sequence_mask(lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask)
        if skip_head:
            x, x_mask = x[:, :, skip_head:], x_mask[:, :, skip_head:]
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> latent z (reparameterised sample), mean, log-std (training only)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        dilation_rate: int = 1,
        n_layers: int = 16,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[B, spec_channels, T]``, x_lengths ``[B]``, g ``[B, gin, 1]``
        -> (z, m, logs each ``[B, out, T]``, x_mask ``[B, 1, T]``). Draws ``randn_like(m)``."""
        x_mask = sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.enc(self.pre(x) * x_mask, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask
