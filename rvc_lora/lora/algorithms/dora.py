"""DoRA (weight-decomposed LoRA): a per-output-channel magnitude times a LoRA-adapted direction.

``W' = m * V / ||V||`` with ``V = W + scale * up @ down`` (LoRA's layouts) and the norm taken per output
channel (over every weight dim but the output one: dim 0 for Conv1d / Linear, dim 1 for ConvTranspose1d).
``m`` starts at ``||W||`` and ``up`` at zero, so a new adapter is an exact identity. File parts: LoRA's plus
``dora_scale`` (``m``, shaped to broadcast against the weight: ``[O, 1, 1]``, ``[O, 1]`` or ``[1, O, 1]``, as
LyCORIS writes it; peft's ``[O]`` / ``[1, O, 1]`` magnitudes are read too).

The delta is ``W' - W``; strength scales it linearly like every other algorithm's.
"""

from __future__ import annotations

import torch

from rvc_lora.models.weight_norm import norm_except_dim

from .base import AdaptedLayer, AdapterModule, alpha_scale, as_parameter
from .lora import LoRA


def magnitude_shape(weight_shape: tuple[int, ...], out_dim: int) -> tuple[int, ...]:
    return tuple(n if d == out_dim else 1 for d, n in enumerate(weight_shape))


class DoRA(LoRA):
    algorithm = "dora"
    part_names = frozenset({"lora_down", "lora_up", "dora_scale"})
    markers = frozenset({"dora_scale"})
    has_branch = False  # its bypass needs the full adapted weight for the norm anyway

    def __init__(self, layer: AdaptedLayer, down: torch.Tensor, up: torch.Tensor, scale: float,
                 magnitude: torch.Tensor, dropout: float = 0.0) -> None:
        super().__init__(layer, down, up, scale, dropout)
        self.out_dim = layer.out_dim
        shape = magnitude_shape(self.weight_shape, self.out_dim)
        if magnitude.numel() != self.weight_shape[self.out_dim]:  # any layout of one value per channel
            raise ValueError(f"'{layer.label}': dora_scale has shape {tuple(magnitude.shape)}, expected {shape}")
        self.dora_scale = as_parameter(magnitude.reshape(shape), layer.base.weight)

    @classmethod
    def fresh(cls, layer, config):
        lora = LoRA.fresh(layer, config)
        magnitude = norm_except_dim(layer.original_weight().detach(), layer.out_dim)
        return cls(layer, lora.lora_down, lora.lora_up, lora.scale, magnitude, config.dropout)

    @classmethod
    def from_parts(cls, layer, parts):
        cls.check_parts(layer.label, parts)
        scale = alpha_scale(parts, cls.rank_of(parts))
        return cls(layer, parts["lora_down"], parts["lora_up"], scale, parts["dora_scale"])

    def _gain(self, base_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g, V)``: the direction ``V`` and ``g = m / ||V||`` per output channel (shaped like ``dora_scale``)."""
        direction = base_weight + super().delta_weight(base_weight)
        return self.dora_scale.to(base_weight.dtype) / norm_except_dim(direction, self.out_dim), direction

    def delta_weight(self, base_weight):
        gain, direction = self._gain(base_weight)
        return gain * direction - base_weight

    add_delta_ = AdapterModule.add_delta_  # not LoRA's shortcut: DoRA's delta is not LoRA's

    def bypass(self, layer, x, base_out, *args, **kwargs):
        """``(g - 1) * W x + g * scale * up(down(x))`` with ``g = m / ||V||`` per output channel."""
        gain = layer.channel_view(self._gain(layer.original_weight())[0].reshape(-1))
        bias = layer.base.bias
        plain = base_out if bias is None else base_out - layer.channel_view(bias)
        return (gain - 1) * plain + gain * self.branch(layer, x, *args, **kwargs)
