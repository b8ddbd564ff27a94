"""LoHa: the Hadamard (element-wise) product of two rank-r products, ``dW = (w1a @ w1b) * (w2a @ w2b) * scale``.

On the weight's matrix view ``[D0, D1 * K]``: ``hada_w1_a``, ``hada_w2_a`` are ``[D0, r]`` and ``hada_w1_b``,
``hada_w2_b`` are ``[r, D1 * K]`` (LyCORIS' names and shapes for Conv1d and Linear; ConvTranspose1d uses
the same view of its ``[I, O, K]`` weight). The delta can reach rank r^2 with twice LoRA's parameters at
rank r. Initialised as LyCORIS does (``hada_w2_a`` zero: an exact identity). Scale ``alpha / r``.
There is no cheaper bypass than running the delta as a second operation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import AdaptedLayer, AdapterModule, alpha_scale, as_parameter, fit_shape

PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHa(AdapterModule):
    algorithm = "loha"
    part_names = frozenset(PARTS)
    markers = frozenset(PARTS)

    def __init__(self, layer: AdaptedLayer, factors: dict[str, torch.Tensor], scale: float) -> None:
        super().__init__(layer, rank=int(factors["hada_w1_b"].shape[0]), scale=scale)
        rows, cols = self.weight_shape[0], math.prod(self.weight_shape[1:])
        like = layer.base.weight
        for name in PARTS:
            shape = (rows, self.rank) if name.endswith("_a") else (self.rank, cols)
            setattr(self, name, as_parameter(fit_shape(layer, name, factors[name], shape), like))

    @classmethod
    def fresh(cls, layer, config):
        rows, cols, r = layer.base.weight.shape[0], math.prod(layer.base.weight.shape[1:]), config.rank
        factors = {"hada_w1_a": torch.empty(rows, r), "hada_w1_b": torch.empty(r, cols),
                   "hada_w2_a": torch.zeros(rows, r), "hada_w2_b": torch.empty(r, cols)}
        nn.init.normal_(factors["hada_w1_a"], std=0.1)
        nn.init.normal_(factors["hada_w1_b"], std=1.0)
        nn.init.normal_(factors["hada_w2_b"], std=1.0)
        return cls(layer, factors, config.scale)

    @classmethod
    def check_parts(cls, label, parts):
        if "hada_t1" in parts or "hada_t2" in parts:
            raise ValueError(f"'{label}': LoHa with Tucker cores (hada_t1/hada_t2) is not supported")
        super().check_parts(label, parts)
        missing = [name for name in PARTS if name not in parts]
        if missing:
            raise ValueError(f"'{label}': the LoHa adapter has no {', '.join(missing)}")
        ranks = [parts[n].shape[1] if n.endswith("_a") else parts[n].shape[0] for n in PARTS if parts[n].dim() >= 2]
        if len(ranks) < len(PARTS) or len(set(ranks)) != 1:
            raise ValueError(f"'{label}': LoHa factors disagree on the rank: "
                             + ", ".join(f"{n} {tuple(parts[n].shape)}" for n in PARTS))

    @classmethod
    def from_parts(cls, layer, parts):
        cls.check_parts(layer.label, parts)
        return cls(layer, parts, alpha_scale(parts, cls.rank_of(parts)))

    @staticmethod
    def rank_of(parts):
        return int(parts["hada_w1_b"].shape[0])

    def delta_weight(self, base_weight):
        dt = base_weight.dtype
        first = self.hada_w1_a.to(dt) @ self.hada_w1_b.to(dt)
        second = self.hada_w2_a.to(dt) @ self.hada_w2_b.to(dt)
        return (first * second).reshape(self.weight_shape) * self.scale
