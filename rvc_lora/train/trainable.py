"""What a run trains besides LoRA factors: one speaker-embedding row, and an EMA of the trained weights."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ParameterEMA", "SpeakerRowDelta"]


class SpeakerRowDelta(nn.Module):
    """Wraps a frozen ``nn.Embedding`` and adds a trainable delta to one row only.

    ``forward(sid [B]) -> [B, dim]``: ``embedding(sid) + delta`` where ``sid == row``. The other rows
    are untouched (unlike gradient masking, weight decay cannot move them). ``fold()`` returns a plain
    embedding with the delta added, for merged models.
    """

    def __init__(self, embedding: nn.Embedding, row: int):
        super().__init__()
        if not 0 <= row < embedding.num_embeddings:
            raise ValueError(f"speaker row {row} outside the embedding's {embedding.num_embeddings} rows")
        self.embedding = embedding
        self.row = int(row)
        self.delta = nn.Parameter(torch.zeros(embedding.embedding_dim, device=embedding.weight.device))

    @property
    def weight(self) -> torch.Tensor:
        """The effective table ``[rows, dim]`` (base with the delta on ``row``)."""
        return self.embedding.weight + self.diff()

    def diff(self) -> torch.Tensor:
        """The full delta table ``[rows, dim]``: zero except ``row``."""
        onehot = torch.zeros(self.embedding.num_embeddings, 1, device=self.delta.device, dtype=self.delta.dtype)
        onehot[self.row] = 1.0
        return onehot * self.delta.unsqueeze(0)

    def forward(self, sid: torch.Tensor) -> torch.Tensor:
        hit = (sid == self.row).to(self.delta.dtype).unsqueeze(-1)
        return self.embedding(sid) + hit * self.delta

    def fold(self) -> nn.Embedding:
        """A new plain embedding holding the effective table (the wrapped base is not modified)."""
        out = nn.Embedding(self.embedding.num_embeddings, self.embedding.embedding_dim)
        out.weight.data.copy_(self.weight.detach())
        out.weight.requires_grad_(False)
        return out.to(self.embedding.weight.device)


class ParameterEMA:
    """Exponential moving average of a list of parameters: ``shadow = d * shadow + (1 - d) * param``."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = float(decay)
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live weights and the average (call twice to restore)."""
        for s, p in zip(self.shadow, self.params, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    def state_dict(self) -> list[torch.Tensor]:
        return [s.detach().cpu() for s in self.shadow]

    def load_state_dict(self, tensors: list[torch.Tensor]) -> None:
        for s, t in zip(self.shadow, tensors, strict=True):
            s.copy_(t)
