"""What every adapter algorithm shares: the layer it sees, its file parts, a bias delta, the default bypass.

An algorithm module holds one adapter of one layer. It knows the weight it adapts as a tensor
``W [D0, D1, *K]`` (Conv1d ``[O, I, K]``, ConvTranspose1d ``[I, O, K]`` as PyTorch stores it, Linear
``[O, I]``, Embedding ``[N, D]``) and works on its matrix view ``W.reshape(D0, -1)``; the layer kind only
matters for the bypass forward. Its tensors are parameters named after their adapter-file parts
(LyCORIS names: ``lora_down``, ``hada_w1_a``, ``lokr_w2``, ``dora_scale``, ``diff`` ...), so that
``parts()`` is the file content of the module.
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol

import torch
from torch import nn

WEIGHT_KINDS = frozenset({"conv1d", "conv_transpose1d", "linear"})


class AdapterSettings(Protocol):
    """What an algorithm reads of its configuration (``rvc_lora.lora.LoRAConfig`` provides it)."""

    rank: int
    scale: float  # alpha / rank, or alpha / sqrt(rank) with rsLoRA
    dropout: float
    factor: int  # LoKr: bound of the small Kronecker factor (-1: as square as possible)
    decompose_both: bool  # LoKr: factor the small one too


class AdaptedLayer(Protocol):
    """What an algorithm may use of the wrapper it lives in (``rvc_lora.lora.layers.LoRALayer``)."""

    kind: str  # "conv1d" | "conv_transpose1d" | "linear" | "embedding"
    label: str  # qualified module name, for messages
    base: nn.Module
    out_dim: int  # the weight dim that indexes output channels (1 for ConvTranspose1d, else 0)

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        """The base module's operation with another weight (and the base's stride, padding ...)."""

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """A per-output-channel vector ``[O]`` shaped to broadcast over the layer's output."""

    def original_weight(self) -> torch.Tensor:
        """The base weight without any merged adapter."""


def as_parameter(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    """A fresh parameter holding ``t`` on ``like``'s device and dtype."""
    return nn.Parameter(t.detach().to(device=like.device, dtype=like.dtype, copy=True))


def fit_shape(layer: AdaptedLayer, part: str, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` reshaped to ``shape``, or ValueError naming the layer and the part.

    Accepted besides the exact shape: a missing trailing 1 (``[O, r]`` for ``[O, r, 1]``) and, for a 2-D
    target, a 3-D tensor with the same first dim whose other dims flatten to the second (``[r, d, K]`` for
    ``[r, d * K]``, as LyCORIS' functional code stores conv factors).
    """
    got = tuple(t.shape)
    ok = got == shape or (len(shape) > 1 and shape[-1] == 1 and got == shape[:-1])
    ok = ok or (len(shape) == 2 and len(got) == 3 and got[0] == shape[0] and got[1] * got[2] == shape[1])
    if not ok:
        raise ValueError(f"'{layer.label}': {part} has shape {got}, expected {shape}")
    return t.reshape(shape)


def alpha_scale(parts: dict[str, torch.Tensor], rank: int) -> float:
    """``alpha / rank`` from a file's ``alpha`` part (absent: 1, i.e. alpha = rank)."""
    alpha = parts.get("alpha")
    return 1.0 if alpha is None else float(alpha.reshape(())) / rank


class AdapterModule(nn.Module):
    """One adapter of one algorithm on one layer; subclasses define the parameters and the weight delta.

    ``scale`` multiplies the delta (``alpha / rank`` for the low-rank algorithms); an optional bias delta
    ``diff_b [O]`` is added to the layer's bias. Strength is not applied here: the layer owns it.
    """

    algorithm: ClassVar[str] = ""
    kinds: ClassVar[frozenset[str]] = WEIGHT_KINDS  # layer kinds this algorithm adapts
    part_names: ClassVar[frozenset[str]] = frozenset()  # every tensor part it may have (besides diff_b)
    markers: ClassVar[frozenset[str]] = frozenset()  # parts whose presence in a file selects it
    has_dropout: ClassVar[bool] = False  # input dropout (a bypass-only regulariser)
    has_branch: ClassVar[bool] = False  # a bypass cheaper than the delta as a second operation

    def __init__(self, layer: AdaptedLayer, rank: int = 0, scale: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if layer.kind not in self.kinds:
            raise ValueError(f"'{layer.label}': {self.algorithm} does not adapt {type(layer.base).__name__} layers "
                             f"(it adapts {', '.join(sorted(self.kinds))})")
        self.kind = layer.kind
        self.weight_shape = tuple(layer.base.weight.shape)
        self.rank = int(rank)
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.diff_b: nn.Parameter | None = None

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def fresh(cls, layer: AdaptedLayer, config: AdapterSettings) -> AdapterModule:
        """A new adapter for training whose delta is exactly zero."""
        raise NotImplementedError

    @classmethod
    def from_parts(cls, layer: AdaptedLayer, parts: dict[str, torch.Tensor]) -> AdapterModule:
        """The adapter stored in a file's ``parts`` (see ``part_names``); ValueError if they do not fit."""
        raise NotImplementedError

    @classmethod
    def check_parts(cls, label: str, parts: dict[str, torch.Tensor]) -> None:
        """ValueError if ``parts`` mixes in tensors this algorithm does not have (``label`` names the module)."""
        extra = sorted(set(parts) - cls.part_names - {"diff_b", "alpha"})
        if extra:
            raise ValueError(f"'{label}': {cls.algorithm} adapter with unexpected parts {extra} "
                             f"(mixes several algorithms?)")

    @staticmethod
    def rank_of(parts: dict[str, torch.Tensor]) -> int:
        """The rank stored in ``parts`` (0 for algorithms without one)."""
        return 0

    def set_bias_delta(self, layer: AdaptedLayer, bias: torch.Tensor) -> None:
        """Attach a bias delta ``diff_b`` (shape of the base bias)."""
        base_bias = getattr(layer.base, "bias", None)
        if base_bias is None:
            raise ValueError(f"'{layer.label}' has no bias, so a bias delta (diff_b) cannot be applied")
        if tuple(bias.shape) != tuple(base_bias.shape):
            raise ValueError(f"'{layer.label}': bias delta has shape {tuple(bias.shape)}, "
                             f"expected {tuple(base_bias.shape)}")
        self.diff_b = as_parameter(bias, base_bias)

    # ---- file parts -------------------------------------------------------------------------
    def parts(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors by part name (``alpha`` 0-d fp32 for algorithms with a rank)."""
        out = {name: p.detach() for name, p in self.named_parameters(recurse=False)}
        if self.rank:
            out["alpha"] = torch.tensor(self.scale * self.rank, dtype=torch.float32)
        return out

    @torch.no_grad()
    def load_parts(self, parts: dict[str, torch.Tensor]) -> None:
        """Copy same-shaped tensors into this adapter's parameters (e.g. when resuming training)."""
        own = dict(self.named_parameters(recurse=False))
        for name, p in own.items():
            p.copy_(parts[name].reshape(p.shape))

    # ---- math -------------------------------------------------------------------------------
    def delta_weight(self, base_weight: torch.Tensor) -> torch.Tensor:
        """``scale * dW`` in ``base_weight``'s dtype and shape; ``base_weight`` is the unmerged base."""
        raise NotImplementedError

    def add_delta_(self, target: torch.Tensor, strength: float, base_weight: torch.Tensor) -> None:
        """``target += strength * scale * dW`` in place (``target`` shaped like the weight, any values)."""
        target.add_(self.delta_weight(base_weight).to(target.dtype), alpha=strength)

    def bypass(self, layer: AdaptedLayer, x: torch.Tensor, base_out: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The adapter's contribution to the output computed beside the base (``base_out = base(x)``).

        Default: the layer's operation with the weight delta, which costs one more full operation;
        algorithms with a cheaper factorised branch override it.
        """
        return layer.op(x, self.delta_weight(layer.original_weight()), None, *args, **kwargs)

    @property
    def needs_bypass(self) -> bool:
        """True while input dropout is active: it exists only on the bypass branch."""
        return self.training and isinstance(self.dropout, nn.Dropout)

    def describe(self) -> str:
        return self.algorithm + (f" r={self.rank} alpha={self.scale * self.rank:g}" if self.rank else "")


def kaiming_(t: torch.Tensor) -> torch.Tensor:
    """PyTorch's default layer init (kaiming-uniform with a = sqrt(5)), in place."""
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5))
