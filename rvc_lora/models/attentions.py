"""Transformer encoder of RVC's text (content) encoder: relative-position self-attention + conv FFN.

Relative positions are limited to a window of ±``window_size`` frames; one embedding table is shared
by all heads (``emb_rel_k``/``emb_rel_v`` of shape ``[1, 2 * window + 1, head_dim]``). Positions farther
apart than the window get no relative term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .modules import LayerNorm

__all__ = ["FFN", "Encoder", "MultiHeadAttention"]


def _relative_index(length: int, window: int, device: torch.device) -> torch.Tensor:
    """``[L, L]`` index into ``2 * window + 2`` columns: ``j - i + window`` inside the window, else the
    last (zero) column."""
    pos = torch.arange(length, device=device)
    rel = pos.unsqueeze(0) - pos.unsqueeze(1)  # [i, j] -> j - i
    outside = rel.abs() > window
    return torch.where(outside, torch.full_like(rel, 2 * window + 1), rel + window)


def _absolute_index(length: int, window: int, device: torch.device) -> torch.Tensor:
    """``[L, 2 * window + 1]`` index into ``L + 1`` columns: key position ``i + r - window`` when it
    exists, else the last (zero) column."""
    pos = torch.arange(length, device=device).unsqueeze(1)
    key = pos + torch.arange(2 * window + 1, device=device).unsqueeze(0) - window
    return torch.where((key < 0) | (key >= length), torch.full_like(key, length), key)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with windowed relative position embeddings (keys and values).

    Parameter registration order matches RVC: ``emb_rel_k``, ``emb_rel_v`` come first in the state
    dict (own parameters precede submodules), then ``conv_q``, ``conv_k``, ``conv_v``, ``conv_o``.
    """

    def __init__(
        self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0, window_size: int = 10
    ) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        std = self.k_channels**-0.5
        self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries from x ``[B, C, T]``, keys/values from c ``[B, C, T]``; attn_mask ``[B, 1, T, T]``."""
        q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
        return self.conv_o(self._attend(q, k, v, attn_mask))

    def _attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, d, length = key.shape
        if query.shape[2] != length:
            raise ValueError("relative attention needs queries and keys of the same length")
        w = self.window_size
        # [B, C, T] -> [B, heads, T, head_dim]
        q = query.view(b, self.n_heads, self.k_channels, length).transpose(2, 3)
        k = key.view(b, self.n_heads, self.k_channels, length).transpose(2, 3)
        v = value.view(b, self.n_heads, self.k_channels, length).transpose(2, 3)
        q = q / math.sqrt(self.k_channels)
        scores = torch.matmul(q, k.transpose(-2, -1))  # [B, h, T, T]
        # relative-key logits for the 2w+1 offsets, plus a zero column for "outside the window"
        rel_logits = torch.matmul(q, self.emb_rel_k[0].transpose(0, 1))  # [B, h, T, 2w+1]
        rel_logits = F.pad(rel_logits, (0, 1))
        index = _relative_index(length, w, rel_logits.device).expand(b, self.n_heads, length, length)
        scores = scores + torch.gather(rel_logits, 3, index)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e4)
        p_attn = self.drop(F.softmax(scores, dim=-1))
        output = torch.matmul(p_attn, v)
        # weights per relative offset: [B, h, T, 2w+1]
        p_padded = F.pad(p_attn, (0, 1))
        index = _absolute_index(length, w, p_attn.device).expand(b, self.n_heads, length, 2 * w + 1)
        rel_weights = torch.gather(p_padded, 3, index)
        output = output + torch.matmul(rel_weights, self.emb_rel_v[0])
        return output.transpose(2, 3).contiguous().view(b, d, length)


class FFN(nn.Module):
    """Two "same"-padded convolutions with ReLU, masked before each conv and at the output."""

    def __init__(
        self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.pad(x, ((k - 1) // 2, k // 2)) if k > 1 else x

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, T]``, x_mask ``[B, 1, T]`` -> ``[B, out, T]``."""
        x = torch.relu(self.conv_1(self._pad(x * x_mask)))
        x = self.conv_2(self._pad(self.drop(x) * x_mask))
        return x * x_mask


class Encoder(nn.Module):
    """``n_layers`` × [self-attention -> add -> LayerNorm -> FFN -> add -> LayerNorm] on ``[B, C, T]``."""

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int = 1,
        p_dropout: float = 0.0,
        window_size: int = 10,
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(
                MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, window_size)
            )
            self.norm_layers_1.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout))
            self.norm_layers_2.append(LayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, T]``, x_mask ``[B, 1, T]`` -> ``[B, C, T]`` (masked)."""
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm1, ffn, norm2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm1(x + self.drop(attn(x, x, attn_mask)))
            x = norm2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask
