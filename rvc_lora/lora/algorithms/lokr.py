"""LoKr: a Kronecker product ``dW = kron(w1, w2) * scale`` on the weight's matrix view ``[D0, D1 * K]``.

``D0 = a * b`` and ``D1 = c * d`` are split by ``factorize`` (``factor`` bounds the small side; -1 = as
square as possible). ``w1`` is ``[a, c]`` (``lokr_w1``, or ``lokr_w1_a [a, r] @ lokr_w1_b [r, c]`` with
``decompose_both``); ``w2`` covers the rest: ``lokr_w2 [b, d, *K]`` in full when ``r >= max(b, d) / 2``, else
``lokr_w2_a [b, r] @ lokr_w2_b [r, d * K]``. These are LyCORIS' names, shapes and rules for Conv1d and
Linear; ConvTranspose1d uses the same view of its ``[I, O, K]`` weight. Scale ``alpha / r``, or 1 when both
factors are full. ``w2`` (or ``w2_b``) starts at zero, so a new adapter is an exact identity.
"""

from __future__ import annotations

import math

import torch

from .base import AdaptedLayer, AdapterModule, alpha_scale, as_parameter, fit_shape, kaiming_

PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def factorize(dim: int, factor: int = -1) -> tuple[int, int]:
    """``(m, n)`` with ``m * n = dim`` and ``m <= n``: ``factor`` itself if it divides ``dim``, else the
    largest divisor ``m <= min(factor, sqrt(dim))`` (``factor=-1``: no bound but the square root)."""
    if factor > 0 and dim % factor == 0:
        return min(factor, dim // factor), max(factor, dim // factor)
    limit = dim if factor <= 0 else factor
    m = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0 and d <= limit)
    return m, dim // m


class LoKr(AdapterModule):
    algorithm = "lokr"
    part_names = frozenset(PARTS)
    markers = frozenset({"lokr_w1", "lokr_w1_a"})

    def __init__(self, layer: AdaptedLayer, factors: dict[str, torch.Tensor], scale: float) -> None:
        super().__init__(layer, rank=self.rank_of(factors), scale=scale)
        like = layer.base.weight
        self.full_w1, self.full_w2 = "lokr_w1" in factors, "lokr_w2" in factors
        for name, shape in self._shapes(layer, factors).items():
            setattr(self, name, as_parameter(fit_shape(layer, name, factors[name], shape), like))

    def _shapes(self, layer: AdaptedLayer, factors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        """The expected shape of each given factor, from the base weight and the factors' outer dims."""
        rows, kernel = self.weight_shape[0], self.weight_shape[2:]
        cols = self.weight_shape[1]
        outer = (factors["lokr_w1"],) * 2 if "lokr_w1" in factors else (factors["lokr_w1_a"], factors["lokr_w1_b"])
        a, c = int(outer[0].shape[0]), int(outer[1].shape[-1])
        if not a or not c or rows % a or cols % c:
            raise ValueError(f"'{layer.label}': LoKr w1 of {a}x{c} does not divide the weight {self.weight_shape}")
        b, d, r = rows // a, cols // c, self.rank
        shapes = {"lokr_w1": (a, c)} if "lokr_w1" in factors else {"lokr_w1_a": (a, r), "lokr_w1_b": (r, c)}
        if "lokr_w2" in factors:
            shapes["lokr_w2"] = (b, d, *kernel)
        else:
            shapes.update(lokr_w2_a=(b, r), lokr_w2_b=(r, d * math.prod(kernel)))
        return shapes

    @classmethod
    def fresh(cls, layer, config):
        shape = tuple(layer.base.weight.shape)
        (a, b), (c, d) = factorize(shape[0], config.factor), factorize(shape[1], config.factor)
        kernel, r = shape[2:], config.rank
        factors: dict[str, torch.Tensor] = {}
        full_w1 = not (config.decompose_both and r < max(a, c) / 2)
        if full_w1:
            factors["lokr_w1"] = kaiming_(torch.empty(a, c))
        else:
            factors.update(lokr_w1_a=kaiming_(torch.empty(a, r)), lokr_w1_b=kaiming_(torch.empty(r, c)))
        full_w2 = r >= max(b, d) / 2
        if full_w2:
            factors["lokr_w2"] = torch.zeros(b, d, *kernel)
        else:
            factors.update(lokr_w2_a=kaiming_(torch.empty(b, r)), lokr_w2_b=torch.zeros(r, d * math.prod(kernel)))
        return cls(layer, factors, 1.0 if full_w1 and full_w2 else config.scale)

    @classmethod
    def check_parts(cls, label, parts):
        if "lokr_t2" in parts:
            raise ValueError(f"'{label}': LoKr with a Tucker core (lokr_t2) is not supported")
        super().check_parts(label, parts)
        has = set(parts)
        w1_ok = ("lokr_w1" in has) != ({"lokr_w1_a", "lokr_w1_b"} <= has)
        w2_ok = ("lokr_w2" in has) != ({"lokr_w2_a", "lokr_w2_b"} <= has)
        if not (w1_ok and w2_ok):
            raise ValueError(f"'{label}': a LoKr adapter needs lokr_w1 (or lokr_w1_a + lokr_w1_b) and "
                             f"lokr_w2 (or lokr_w2_a + lokr_w2_b), got {sorted(has & set(PARTS))}")
        for a, b in (("lokr_w1_a", "lokr_w1_b"), ("lokr_w2_a", "lokr_w2_b")):
            if a in has and (parts[a].dim() != 2 or parts[b].dim() < 2 or parts[a].shape[1] != parts[b].shape[0]):
                raise ValueError(f"'{label}': LoKr {a} {tuple(parts[a].shape)} and {b} {tuple(parts[b].shape)} "
                                 "disagree on the rank")

    @classmethod
    def from_parts(cls, layer, parts):
        cls.check_parts(layer.label, parts)
        rank = cls.rank_of(parts)
        return cls(layer, parts, alpha_scale(parts, rank) if rank else 1.0)

    @staticmethod
    def rank_of(parts):
        return next((int(parts[n].shape[1]) for n in ("lokr_w2_a", "lokr_w1_a") if n in parts), 0)

    def delta_weight(self, base_weight):
        dt = base_weight.dtype
        w1 = self.lokr_w1.to(dt) if self.full_w1 else self.lokr_w1_a.to(dt) @ self.lokr_w1_b.to(dt)
        if self.full_w2:
            w2 = self.lokr_w2.to(dt).reshape(self.lokr_w2.shape[0], -1)
        else:
            w2 = self.lokr_w2_a.to(dt) @ self.lokr_w2_b.to(dt)
        return torch.kron(w1, w2).reshape(self.weight_shape) * self.scale
