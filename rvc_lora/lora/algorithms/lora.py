"""LoRA: ``dW = up @ down`` of rank r, scaled by ``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA).

Factor layouts (kohya / LyCORIS ``lora_down`` / ``lora_up``), r = rank:

* Conv1d ``W [O, I, K]``: down ``[r, I, K]`` (a conv with the base's K/stride/padding/dilation), up
  ``[O, r, 1]``; ``dW[o, i, k] = sum_j up[o, j] * down[j, i, k]``.
* ConvTranspose1d ``W [I, O, K]``: down ``[r, I, 1]`` (a 1x1 conv applied first), up ``[r, O, K]`` (a real
  transposed conv with the base's settings); ``dW[i, o, k] = sum_j down[j, i] * up[j, o, k]``.
* Linear ``W [O, I]``: down ``[r, I]``, up ``[O, r]``; ``dW = up @ down``.

The bypass runs ``up(down(dropout(x)))`` on the activations; ``up`` starts at zero (an exact identity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AdaptedLayer, AdapterModule, alpha_scale, as_parameter, fit_shape, kaiming_


def factor_shapes(kind: str, weight_shape: tuple[int, ...], rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(down shape, up shape)`` of a rank-``rank`` LoRA on a layer of ``kind`` with ``weight_shape``."""
    if kind == "conv1d":
        o, i, k = weight_shape
        return (rank, i, k), (o, rank, 1)
    if kind == "conv_transpose1d":
        i, o, k = weight_shape
        return (rank, i, 1), (rank, o, k)
    o, i = weight_shape
    return (rank, i), (o, rank)


class LoRA(AdapterModule):
    algorithm = "lora"
    part_names = frozenset({"lora_down", "lora_up"})
    markers = frozenset({"lora_down", "lora_up"})
    has_dropout = True
    has_branch = True

    def __init__(self, layer: AdaptedLayer, down: torch.Tensor, up: torch.Tensor, scale: float,
                 dropout: float = 0.0) -> None:
        super().__init__(layer, rank=int(down.shape[0]), scale=scale, dropout=dropout)
        down_shape, up_shape = factor_shapes(self.kind, self.weight_shape, self.rank)
        like = layer.base.weight
        self.lora_down = as_parameter(fit_shape(layer, "lora_down", down, down_shape), like)
        self.lora_up = as_parameter(fit_shape(layer, "lora_up", up, up_shape), like)

    @classmethod
    def fresh(cls, layer, config):
        down_shape, up_shape = factor_shapes(layer.kind, tuple(layer.base.weight.shape), config.rank)
        down = kaiming_(torch.empty(down_shape))
        return cls(layer, down, torch.zeros(up_shape), config.scale, config.dropout)

    @classmethod
    def check_parts(cls, label, parts):
        super().check_parts(label, parts)
        for name in ("lora_down", "lora_up"):
            if name not in parts:
                raise ValueError(f"'{label}': the {cls.algorithm} adapter has no {name} tensor")

    @classmethod
    def from_parts(cls, layer, parts):
        cls.check_parts(layer.label, parts)
        return cls(layer, parts["lora_down"], parts["lora_up"], alpha_scale(parts, cls.rank_of(parts)))

    @staticmethod
    def rank_of(parts):
        return int(parts["lora_down"].shape[0])

    def _matrices(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left [D0, r], right [r, D1 * K])`` with ``dW.reshape(D0, -1) = left @ right``."""
        down, up, r = self.lora_down.to(dtype), self.lora_up.to(dtype), self.rank
        if self.kind == "conv_transpose1d":
            return down.reshape(r, -1).t(), up.reshape(r, -1)
        return up.reshape(-1, r), down.reshape(r, -1)

    def delta_weight(self, base_weight):
        left, right = self._matrices(base_weight.dtype)
        return ((left * self.scale) @ right).reshape(self.weight_shape)

    def add_delta_(self, target, strength, base_weight):
        if not target.is_contiguous():  # e.g. restrided for channels-last execution (models.layout)
            super().add_delta_(target, strength, base_weight)
            return
        left, right = self._matrices(target.dtype)  # one fused pass over the weight, no delta tensor
        target.view(left.shape[0], -1).addmm_(left, right, alpha=strength * self.scale)

    def branch(self, layer: AdaptedLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``scale * up(down(dropout(x)))``: the low-rank path on the activations."""
        x = self.dropout(x)
        up = self.lora_up * self.scale  # scaling the small factor, not the full-length output
        if self.kind == "conv_transpose1d":
            return layer.op(F.conv1d(x, self.lora_down), up, None, *args, **kwargs)
        pointwise = F.linear if self.kind == "linear" else F.conv1d
        return pointwise(layer.op(x, self.lora_down, None), up)

    def bypass(self, layer, x, base_out, *args, **kwargs):
        return self.branch(layer, x, *args, **kwargs)
