"""LoRA wrappers around a frozen ``nn.Conv1d`` / ``nn.ConvTranspose1d`` / ``nn.Linear``.

Each wrapper holds the original module as ``base`` and any number of named adapters. An adapter is
either low-rank (``lora``: ``down``/``up`` factors, a scale ``alpha / rank``) or a full weight delta
(``diff``), optionally with a bias delta, and has a ``strength`` and an enabled flag::

    y = base(x) + sum_a strength_a * scale_a * up_a(down_a(dropout_a(x)))   (+ strength_a * bias_a)

over enabled adapters that are not merged. Weight layouts (``r`` = rank):

* Conv1d, base ``[O, I, K]``: down ``[r, I, K]`` (same K/stride/padding/dilation), up ``[O, r, 1]``;
  delta ``[o, i, k] = sum_j up[o, j] * down[j, i, k]``.
* ConvTranspose1d, base ``[I, O, K]``: down is a 1x1 Conv1d ``[r, I, 1]`` applied first, up a real
  ConvTranspose1d ``[r, O, K]`` (same K/stride/padding/output_padding/dilation);
  delta ``[i, o, k] = sum_j down[j, i] * up[j, o, k]``.
* Linear, base ``[O, I]``: down ``[r, I]``, up ``[O, r]``; delta = up @ down.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import lora_scale
from .weight_norm import has_weight_norm

LORA = "lora"
DIFF = "diff"


class LoRALayer(nn.Module):
    """Common machinery; subclasses define the factor shapes and the functional op of the base."""

    base_class: type[nn.Module] = nn.Module

    def __init__(self, base: nn.Module, name: str = "") -> None:
        super().__init__()
        if not isinstance(base, self.base_class):
            raise TypeError(
                f"{type(self).__name__} wraps {self.base_class.__name__}, got {type(base).__name__}"
            )
        self._check_supported(base, name)
        self.base = base
        self.module_name = name
        self._base_requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_down = nn.ModuleDict()
        self.lora_up = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_diff = nn.ParameterDict()
        self.lora_bias = nn.ParameterDict()
        self.kind: dict[str, str] = {}
        self.rank: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scale: dict[str, float] = {}
        self.strength: dict[str, float] = {}
        self.enabled: dict[str, bool] = {}
        self.merged: dict[str, float] = {}  # adapter name -> strength it was merged with
        self._premerge: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # ---- hooks for subclasses -------------------------------------------------------------
    def _check_supported(self, base: nn.Module, name: str) -> None:
        label = name or type(base).__name__
        if getattr(base, "groups", 1) != 1:
            raise ValueError(
                f"LoRA does not support grouped convolutions (groups={base.groups}) in '{label}'"
            )
        if has_weight_norm(base):
            raise ValueError(f"'{label}' is weight-normed; fold it first (weight_norm.fold_weight_norm)")
        mode = getattr(base, "padding_mode", "zeros")
        if mode != "zeros":
            raise ValueError(f"LoRA does not support padding_mode='{mode}' in '{label}' (only 'zeros')")

    def _make_factors(self, rank: int) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def _factor_product(self, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Unscaled weight delta (shape of ``base.weight``) from the factor weights."""
        raise NotImplementedError

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      **kwargs) -> torch.Tensor:
        """The base module's operation with another weight (used by diff adapters)."""
        raise NotImplementedError

    def _run_factors(self, name: str, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.lora_up[name](self.lora_down[name](x))

    def _bias_shape(self) -> tuple[int, ...]:
        b = self.base
        return (b.out_features if isinstance(b, nn.Linear) else b.out_channels,)

    def _bias_view(self, bias: torch.Tensor) -> torch.Tensor:
        """Bias ``[O]`` shaped to broadcast over the output (``[O, 1]`` for convs)."""
        return bias.view(-1, 1)

    # ---- adapter management ---------------------------------------------------------------
    @property
    def label(self) -> str:
        """Qualified module name if known (for messages), else the base class name."""
        return self.module_name or type(self.base).__name__

    @property
    def adapter_names(self) -> list[str]:
        return list(self.kind)

    def _check_new_name(self, name: str) -> None:
        if not name or "." in name:
            raise ValueError(f"adapter name must be non-empty and without dots, got {name!r}")

    def _register(self, name: str, kind: str, rank: int, alpha: float, scale: float) -> None:
        self.kind[name] = kind
        self.rank[name] = rank
        self.alpha[name] = alpha
        self.scale[name] = scale
        self.strength.setdefault(name, 1.0)
        self.enabled.setdefault(name, True)

    def add_adapter(self, name: str, rank: int, alpha: float | None = None, dropout: float = 0.0,
                    rs_lora: bool = False) -> None:
        """Add a fresh low-rank adapter: ``down`` kaiming-uniform, ``up`` zero (exact identity)."""
        self._check_new_name(name)
        if name in self.kind:
            raise ValueError(f"adapter '{name}' already exists in '{self.label}'")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        scale = lora_scale(rank, alpha, rs_lora)
        down, up = self._make_factors(rank)
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(up.weight)
        self.lora_down[name] = down
        self.lora_up[name] = up
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._register(name, LORA, rank, float(rank) if alpha is None else float(alpha), scale)

    def set_factors(self, name: str, down: torch.Tensor, up: torch.Tensor, alpha: float | None = None,
                    bias: torch.Tensor | None = None) -> None:
        """Create or replace adapter ``name`` from raw factors (layouts in the module docstring).

        ``alpha=None`` means ``alpha = rank``. For 1x1 factors a missing trailing kernel dim is accepted.
        """
        self._check_new_name(name)
        rank = int(down.shape[0])
        self._drop(name)
        self.add_adapter(name, rank, alpha)
        label = self.label
        for part, t in (("lora_down", down), ("lora_up", up)):
            target = getattr(self, part)[name].weight
            t = t.detach()
            if tuple(t.shape) != tuple(target.shape):
                if t.numel() == target.numel() and tuple(t.shape) == tuple(target.shape[:-1]) \
                        and target.shape[-1] == 1:
                    t = t.reshape(target.shape)
                else:
                    self._drop(name)
                    raise ValueError(f"'{label}': {part} has shape {tuple(t.shape)}, expected "
                                     f"{tuple(target.shape)} for adapter '{name}'")
            with torch.no_grad():
                target.copy_(t.to(dtype=target.dtype, device=target.device))
        if bias is not None:
            self._set_bias(name, bias)

    def set_diff(self, name: str, diff_weight: torch.Tensor, diff_bias: torch.Tensor | None = None) -> None:
        """Create or replace a full-delta adapter: adds ``strength * op(x, diff_weight)`` (+ bias)."""
        self._check_new_name(name)
        w = self.base.weight
        label = self.label
        if tuple(diff_weight.shape) != tuple(w.shape):
            raise ValueError(
                f"'{label}': diff has shape {tuple(diff_weight.shape)}, expected {tuple(w.shape)}"
            )
        self._drop(name)
        self.lora_diff[name] = nn.Parameter(diff_weight.detach().to(dtype=w.dtype, device=w.device).clone())
        self._register(name, DIFF, 0, 1.0, 1.0)
        if diff_bias is not None:
            self._set_bias(name, diff_bias)

    def _set_bias(self, name: str, bias: torch.Tensor) -> None:
        label = self.label
        if self.base.bias is None:
            self._drop(name)
            raise ValueError(f"'{label}' has no bias, so a bias delta (diff_b) cannot be applied")
        if tuple(bias.shape) != self._bias_shape():
            self._drop(name)
            raise ValueError(
                f"'{label}': bias delta has shape {tuple(bias.shape)}, expected {self._bias_shape()}"
            )
        b = self.base.bias
        self.lora_bias[name] = nn.Parameter(bias.detach().to(dtype=b.dtype, device=b.device).clone())

    def _drop(self, name: str) -> None:
        if name in self.merged:
            raise ValueError(f"adapter '{name}' is merged; unmerge() before replacing or deleting it")
        for container in (self.lora_down, self.lora_up, self.lora_dropout, self.lora_diff, self.lora_bias):
            if name in container:
                del container[name]
        for d in (self.kind, self.rank, self.alpha, self.scale):
            d.pop(name, None)

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (re-merging the others if it was merged)."""
        self._require(name)
        with self._remerged():
            self.merged.pop(name, None)
            self._drop(name)
            self.strength.pop(name, None)
            self.enabled.pop(name, None)

    def _require(self, name: str) -> None:
        if name not in self.kind:
            label = self.label
            raise KeyError(f"no adapter '{name}' in '{label}' (have {self.adapter_names})")

    def set_strength(self, name: str, strength: float) -> None:
        """Set the multiplier of adapter ``name`` (any real number); re-merges if it is merged."""
        self._require(name)
        with self._remerged():
            self.strength[name] = float(strength)

    def enable(self, name: str | None = None) -> None:
        """Enable adapter ``name`` (all adapters if None)."""
        with self._remerged():
            for n in self._names(name):
                self.enabled[n] = True

    def disable(self, name: str | None = None) -> None:
        """Disable adapter ``name`` (all if None); a merged adapter is taken back out of the weight."""
        with self._remerged():
            for n in self._names(name):
                self.enabled[n] = False

    def _names(self, name: str | None) -> list[str]:
        if name is None:
            return self.adapter_names
        self._require(name)
        return [name]

    @contextlib.contextmanager
    def _remerged(self) -> Iterator[None]:
        """Unmerge for the duration of a change, then re-merge what is still present and enabled."""
        names = list(self.merged)
        if names:
            self.unmerge()
        yield
        names = [n for n in names if n in self.kind and self.enabled[n]]
        if names:
            self.merge(names)

    # ---- math -----------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """Weight delta of adapter ``name`` incl. its scale, excl. strength; shape of ``base.weight``."""
        self._require(name)
        if self.kind[name] == DIFF:
            return self.lora_diff[name]
        down = self.lora_down[name].weight
        up = self.lora_up[name].weight
        return self._factor_product(down, up) * self.scale[name]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        for name, kind in self.kind.items():
            if not self.enabled[name] or name in self.merged:
                continue
            s = self.strength[name]
            if s == 0.0:
                continue
            if kind == DIFF:
                out = out + s * self._apply_weight(x, self.lora_diff[name], None, *args, **kwargs)
            else:
                h = self._run_factors(name, self.lora_dropout[name](x), *args, **kwargs)
                out = out + (s * self.scale[name]) * h
            if name in self.lora_bias:
                out = out + s * self._bias_view(self.lora_bias[name])
        return out

    @torch.no_grad()
    def merge(self, names: list[str] | None = None) -> list[str]:
        """Add ``strength * delta`` of adapters (default: all enabled, unmerged) into ``base.weight``.

        The pre-merge weight/bias are kept so ``unmerge()`` restores them bit-exactly. The base
        dtype is unchanged (the sum is done in fp32 at least). Returns the names merged.
        """
        if names is None:
            names = [n for n in self.kind if self.enabled[n] and n not in self.merged]
        for n in names:
            self._require(n)
        names = [n for n in names if n not in self.merged]
        if not names:
            return []
        w = self.base.weight
        b = self.base.bias
        if self._premerge is None:
            self._premerge = (w.detach().clone(), None if b is None else b.detach().clone())
        acc = torch.promote_types(w.dtype, torch.float32)
        new_w = w.detach().to(acc)
        new_b = None if b is None else b.detach().to(acc)
        for n in names:
            s = self.strength[n]
            new_w = new_w + s * self.delta_weight(n).detach().to(acc)
            if n in self.lora_bias and new_b is not None:
                new_b = new_b + s * self.lora_bias[n].detach().to(acc)
            self.merged[n] = s
        w.copy_(new_w.to(w.dtype))
        if b is not None:
            b.copy_(new_b.to(b.dtype))
        return names

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact pre-merge base weight and bias."""
        if self._premerge is None:
            return
        w0, b0 = self._premerge
        self.base.weight.copy_(w0)
        if b0 is not None:
            self.base.bias.copy_(b0)
        self._premerge = None
        self.merged.clear()

    def unload(self) -> nn.Module:
        """Merge every enabled adapter and return the base module (original class, no LoRA)."""
        self.merge()
        self._premerge = None
        self.merged.clear()
        for n, p in self.base.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(n, True))
        return self.base

    def extra_repr(self) -> str:
        parts = []
        for n, k in self.kind.items():
            desc = f"{n}: {k}" + (f" r={self.rank[n]} alpha={self.alpha[n]:g}" if k == LORA else "")
            desc += f" strength={self.strength[n]:g}" + ("" if self.enabled[n] else " disabled")
            desc += " merged" if n in self.merged else ""
            parts.append(desc)
        return "adapters: " + ("; ".join(parts) if parts else "none")


class LoRAConv1d(LoRALayer):
    """LoRA on ``nn.Conv1d``: input ``[B, I, T]`` -> output ``[B, O, T']`` like the base."""

    base_class = nn.Conv1d

    def _make_factors(self, rank: int) -> tuple[nn.Module, nn.Module]:
        b = self.base
        w = b.weight
        kw = dict(device=w.device, dtype=w.dtype, bias=False)
        down = nn.Conv1d(b.in_channels, rank, b.kernel_size, b.stride, b.padding, b.dilation, **kw)
        up = nn.Conv1d(rank, b.out_channels, 1, **kw)
        return down, up

    def _factor_product(self, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oj,jik->oik", up[:, :, 0], down)

    def _apply_weight(self, x, weight, bias, *args, **kwargs):
        b = self.base
        return F.conv1d(x, weight, bias, b.stride, b.padding, b.dilation, 1)


class LoRAConvTranspose1d(LoRALayer):
    """LoRA on ``nn.ConvTranspose1d`` (real transposed conv on the up side); ``forward(x, output_size)``."""

    base_class = nn.ConvTranspose1d

    def _make_factors(self, rank: int) -> tuple[nn.Module, nn.Module]:
        b = self.base
        w = b.weight
        kw = dict(device=w.device, dtype=w.dtype, bias=False)
        down = nn.Conv1d(b.in_channels, rank, 1, **kw)
        up = nn.ConvTranspose1d(rank, b.out_channels, b.kernel_size, b.stride, b.padding,
                                b.output_padding, dilation=b.dilation, **kw)
        return down, up

    def _factor_product(self, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ji,jok->iok", down[:, :, 0], up)

    def _run_factors(self, name, x, output_size=None):
        return self.lora_up[name](self.lora_down[name](x), output_size)

    def _apply_weight(self, x, weight, bias, output_size=None):
        b = self.base
        out_pad = b._output_padding(x, output_size, b.stride, b.padding, b.kernel_size, 1, b.dilation)
        return F.conv_transpose1d(x, weight, bias, b.stride, b.padding, out_pad, 1, b.dilation)


class LoRALinear(LoRALayer):
    """LoRA on ``nn.Linear``: input ``[..., I]`` -> output ``[..., O]``."""

    base_class = nn.Linear

    def _make_factors(self, rank: int) -> tuple[nn.Module, nn.Module]:
        b = self.base
        w = b.weight
        kw = dict(device=w.device, dtype=w.dtype, bias=False)
        return nn.Linear(b.in_features, rank, **kw), nn.Linear(rank, b.out_features, **kw)

    def _factor_product(self, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return up @ down

    def _apply_weight(self, x, weight, bias, *args, **kwargs):
        return F.linear(x, weight, bias)

    def _bias_view(self, bias: torch.Tensor) -> torch.Tensor:
        return bias


WRAPPERS: dict[type[nn.Module], type[LoRALayer]] = {
    nn.Conv1d: LoRAConv1d,
    nn.ConvTranspose1d: LoRAConvTranspose1d,
    nn.Linear: LoRALinear,
}


def wrapper_for(module: nn.Module) -> type[LoRALayer] | None:
    """The LoRA wrapper class for ``module`` (by isinstance), or None if unsupported."""
    for cls, wrapper in WRAPPERS.items():
        if isinstance(module, cls):
            return wrapper
    return None
