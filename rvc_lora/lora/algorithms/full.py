"""Full delta: ``dW = diff`` (the whole weight's shape), file part ``diff`` (plus the shared ``diff_b``).

What extraction stores where factors would be larger, and the only algorithm that also adapts an
Embedding (a trained speaker row is a full delta of the speaker table). A new one starts at zero.
"""

from __future__ import annotations

import torch

from .base import WEIGHT_KINDS, AdaptedLayer, AdapterModule, as_parameter, fit_shape


class FullDelta(AdapterModule):
    algorithm = "full"
    kinds = WEIGHT_KINDS | {"embedding"}
    part_names = frozenset({"diff"})
    markers = frozenset({"diff"})

    def __init__(self, layer: AdaptedLayer, diff: torch.Tensor) -> None:
        super().__init__(layer)
        self.diff = as_parameter(fit_shape(layer, "diff", diff, self.weight_shape), layer.base.weight)

    @classmethod
    def fresh(cls, layer, config):
        return cls(layer, torch.zeros(layer.base.weight.shape))

    @classmethod
    def from_parts(cls, layer, parts):
        cls.check_parts(layer.label, parts)
        return cls(layer, parts["diff"])

    def delta_weight(self, base_weight):
        return self.diff.to(base_weight.dtype)
