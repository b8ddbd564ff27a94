"""Adapter wrappers around a frozen ``nn.Conv1d`` / ``nn.ConvTranspose1d`` / ``nn.Linear`` / ``nn.Embedding``.

A wrapper holds the original module as ``base`` and any number of named adapters of any algorithm
(``rvc_lora.lora.algorithms``), each with a ``strength`` and an enabled flag. Its output is the base
operation with the weight (and bias)

    W_eff = W + sum_a strength_a * dW_a        b_eff = b + sum_a strength_a * db_a

over enabled adapters. Two ways to compute it, chosen per forward (``forward_mode``):

* **rebuild**: ``effective_weight()`` builds ``W_eff`` once (a few MB, whatever the signal length) and one
  operation runs: the cost of a merged model. Used for inference (no gradients).
* **bypass**: the base runs unchanged and each adapter adds its branch computed on the activations
  (LoRA: ``up(down(x))``; other algorithms run their delta as a second operation); needed for input
  dropout. For training LoRA, ``auto`` picks per layer kind whichever ``tools/bench_lora.py`` measured
  faster (``TRAINING_MODE``); the other algorithms always train in rebuild mode.

``merge()`` writes ``W_eff`` into the base weight (summed in fp32 at least, so live and merged agree);
``unmerge()`` restores the kept pre-merge weight bit for bit. Deltas are always taken against that original
base, so merged and live adapters can be mixed in any order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rvc_lora.models.weight_norm import has_weight_norm

from .algorithms import ALGORITHMS, AdapterModule, algorithm_of
from .config import LoRAConfig

FORWARD_MODES = ("auto", "rebuild", "bypass")
# Training (gradients on) with forward_mode="auto": which mode per layer kind. tools/bench_lora.py on the
# v2 40k generator (tools/results/bench_lora.txt, 2-core EPYC): bypass and rebuild within 1% on the whole
# generator (rebuild wins at the full-rate stages and dilated kernels, bypass at the 256-channel ones), so
# rebuild is kept everywhere: it allocates no full-length branch activations.
TRAINING_MODE = {"conv1d": "rebuild", "conv_transpose1d": "rebuild", "linear": "rebuild", "embedding": "rebuild"}


def accumulate(target: torch.Tensor, terms: list[tuple[AdapterModule, float]], base_weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> None:
    """``target += sum(strength * dW)`` (and ``bias += sum(strength * db)``) in place, deltas taken against
    ``base_weight``: the one place adapter deltas are added, for rebuilt and for merged weights."""
    for adapter, strength in terms:
        adapter.add_delta_(target, strength, base_weight)
        if bias is not None and adapter.diff_b is not None:
            bias.add_(adapter.diff_b.to(bias.dtype), alpha=strength)


class LoRALayer(nn.Module):
    """Common machinery; subclasses name the wrapped class and define its operation with another weight."""

    base_class: type[nn.Module] = nn.Module
    kind = ""
    out_dim = 0

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
        self.adapters = nn.ModuleDict()
        self.strength: dict[str, float] = {}
        self.enabled: dict[str, bool] = {}
        self.merged: dict[str, float] = {}  # adapter name -> strength it was merged with
        self.forward_mode = "auto"
        self._premerge: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # ---- the wrapped operation (subclasses) -------------------------------------------------
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

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        """The base module's operation with ``weight`` / ``bias`` in place of its own."""
        raise NotImplementedError

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """A per-output-channel ``[O]`` vector shaped to broadcast over the output ``[B, O, T]``."""
        return v.view(-1, 1)

    @property
    def weight(self) -> torch.Tensor:
        """The base module's weight as stored (merged adapters included, live ones not), for code that
        reads ``module.weight`` (shapes, dtypes)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    # ---- adapter management -----------------------------------------------------------------
    @property
    def label(self) -> str:
        """Qualified module name if known (for messages), else the base class name."""
        return self.module_name or type(self.base).__name__

    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapters)

    def _check_new_name(self, name: str) -> None:
        if not name or "." in name:
            raise ValueError(f"adapter name must be non-empty and without dots, got {name!r}")

    def _insert(self, name: str, module: AdapterModule) -> None:
        self._drop(name)
        self.adapters[name] = module
        self.strength.setdefault(name, 1.0)
        self.enabled.setdefault(name, True)

    def add_adapter(self, name: str, config: LoRAConfig) -> None:
        """Add a fresh adapter of ``config.algorithm`` whose delta is exactly zero (for training)."""
        self._check_new_name(name)
        if name in self.adapters:
            raise ValueError(f"adapter '{name}' already exists in '{self.label}'")
        self._insert(name, ALGORITHMS[config.algorithm].fresh(self, config))

    def set_parts(self, name: str, parts: dict[str, torch.Tensor]) -> None:
        """Create or replace adapter ``name`` from one module's adapter-file parts; the algorithm is
        recognised from them (``lora_down``/``lora_up`` [+ ``dora_scale``], ``hada_*``, ``lokr_*``, ``diff``),
        and ``diff_b`` adds a bias delta. ValueError (naming the module) if they do not fit this layer."""
        self._check_new_name(name)
        cls = algorithm_of(parts)
        if cls is None:
            raise ValueError(f"'{self.label}' has an incomplete adapter: parts {sorted(parts)}")
        module = cls.from_parts(self, parts)
        if "diff_b" in parts:
            module.set_bias_delta(self, parts["diff_b"])
        self._insert(name, module)

    def _drop(self, name: str) -> None:
        if name in self.merged:
            raise ValueError(f"adapter '{name}' is merged; unmerge() before replacing or deleting it")
        if name in self.adapters:
            del self.adapters[name]

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (re-merging the others if it was merged)."""
        self._require(name)
        with self._remerged([name]):
            self.merged.pop(name, None)
            self._drop(name)
            self.strength.pop(name, None)
            self.enabled.pop(name, None)

    def _require(self, name: str) -> None:
        if name not in self.adapters:
            raise KeyError(f"no adapter '{name}' in '{self.label}' (have {self.adapter_names})")

    def set_strength(self, name: str, strength: float) -> None:
        """Set the multiplier of adapter ``name`` (any real number); re-merges if it is merged."""
        self._require(name)
        with self._remerged([name]):
            self.strength[name] = float(strength)

    def enable(self, name: str | None = None) -> None:
        """Enable adapter ``name`` (all adapters if None)."""
        for n in self._names(name):
            self.enabled[n] = True

    def disable(self, name: str | None = None) -> None:
        """Disable adapter ``name`` (all if None); a merged adapter is taken back out of the weight."""
        names = self._names(name)
        with self._remerged(names):
            for n in names:
                self.enabled[n] = False

    def _names(self, name: str | None) -> list[str]:
        if name is None:
            return self.adapter_names
        self._require(name)
        return [name]

    @contextlib.contextmanager
    def _remerged(self, changing: list[str]) -> Iterator[None]:
        """If any of the ``changing`` adapters is merged: unmerge for the duration of the change, then
        re-merge what is still present and enabled. Otherwise the weights are left alone."""
        if not any(n in self.merged for n in changing):
            yield
            return
        names = list(self.merged)
        self.unmerge()
        yield
        names = [n for n in names if n in self.adapters and self.enabled[n]]
        if names:
            self.merge(names)

    # ---- math -------------------------------------------------------------------------------
    def original_weight(self) -> torch.Tensor:
        """The base weight without any merged adapter (what every delta is taken against)."""
        return self._premerge[0] if self._premerge is not None else self.base.weight

    def delta_weight(self, name: str) -> torch.Tensor:
        """Weight delta of adapter ``name`` incl. its scale, excl. strength; shape of ``base.weight``."""
        self._require(name)
        return self.adapters[name].delta_weight(self.original_weight())

    def _live(self) -> list[tuple[str, float]]:
        """(name, strength) of the adapters that act on this forward: enabled, not merged, non-zero."""
        return [(n, self.strength[n]) for n in self.adapters
                if self.enabled[n] and n not in self.merged and self.strength[n] != 0.0]

    def effective_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_eff, b_eff)`` for this forward: the base's (with any merged adapters) plus strength x delta
        of each live adapter; shapes of ``base.weight`` / ``base.bias``, in the base dtype."""
        weight = self.base.weight.clone()
        bias = None if self.bias is None else self.bias.clone()
        accumulate(weight, [(self.adapters[n], s) for n, s in self._live()], self.original_weight(), bias)
        return weight, bias

    def layout_free_weights(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None] | None:
        """``(base, weight, bias)`` with which a caller may run this layer's operation itself, in another
        memory layout (``rvc_lora.models.layout.apply_conv``): the base's own weights when no adapter is
        live (none loaded, or all merged), the effective weights in rebuild mode; None in bypass mode."""
        live = self._live()
        if not live:
            return self.base, self.base.weight, self.bias
        if self._rebuilds(live):
            return (self.base, *self.effective_weight())
        return None

    def _rebuilds(self, live: list[tuple[str, float]]) -> bool:
        """Whether this forward uses the rebuild mode (see the module docstring)."""
        if self.merged:
            return True  # bypass branches are defined against the unmerged base
        if self.forward_mode != "auto":
            return self.forward_mode == "rebuild"
        modules = [self.adapters[n] for n, _ in live]
        if any(m.needs_bypass for m in modules):
            return False
        training = torch.is_grad_enabled() and any(p.requires_grad for m in modules for p in m.parameters())
        if not training or not any(m.has_branch for m in modules):
            return True  # without a factorised branch, bypass only adds a second operation
        return TRAINING_MODE[self.kind] == "rebuild"

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        live = self._live()
        if not live:
            return self.base(x, *args, **kwargs)
        if self._rebuilds(live):
            weight, bias = self.effective_weight()
            return self.op(x, weight, bias, *args, **kwargs)
        base_out = self.base(x, *args, **kwargs)
        out = base_out
        for name, s in live:
            adapter = self.adapters[name]
            out = out + s * adapter.bypass(self, x, base_out, *args, **kwargs)
            if adapter.diff_b is not None:
                out = out + s * self.channel_view(adapter.diff_b)
        return out

    @torch.no_grad()
    def merge(self, names: list[str] | None = None) -> list[str]:
        """Add ``strength * delta`` of adapters (default: all enabled, unmerged) into ``base.weight``.

        The pre-merge weight/bias are kept so ``unmerge()`` restores them bit-exactly. The base
        dtype is unchanged (the sum is done in fp32 at least). Returns the names merged.
        """
        if names is None:
            names = [n for n in self.adapters if self.enabled[n] and n not in self.merged]
        for n in names:
            self._require(n)
        names = [n for n in names if n not in self.merged]
        if not names:
            return []
        w, b = self.base.weight, self.bias
        if self._premerge is None:
            self._premerge = (w.detach().clone(), None if b is None else b.detach().clone())
        acc = torch.promote_types(w.dtype, torch.float32)  # fp16/bf16 weights are summed in fp32
        w_acc, b_acc = w.to(acc), None if b is None else b.to(acc)  # the parameters themselves when fp32
        accumulate(w_acc, [(self.adapters[n], self.strength[n]) for n in names], self._premerge[0].to(acc), b_acc)
        if w_acc is not w:
            w.copy_(w_acc)
        if b is not None and b_acc is not b:
            b.copy_(b_acc)
        for n in names:
            self.merged[n] = self.strength[n]
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
        for n, adapter in self.adapters.items():
            desc = f"{n}: {adapter.describe()} strength={self.strength[n]:g}"
            desc += ("" if self.enabled[n] else " disabled") + (" merged" if n in self.merged else "")
            parts.append(desc)
        return "adapters: " + ("; ".join(parts) if parts else "none")


class LoRAConv1d(LoRALayer):
    """Adapters on ``nn.Conv1d``: input ``[B, I, T]`` -> output ``[B, O, T']`` like the base."""

    base_class = nn.Conv1d
    kind = "conv1d"

    def op(self, x, weight, bias, *args, **kwargs):
        b = self.base
        return F.conv1d(x, weight, bias, b.stride, b.padding, b.dilation, 1)


class LoRAConvTranspose1d(LoRALayer):
    """Adapters on ``nn.ConvTranspose1d`` (weight ``[I, O, K]``); ``forward(x, output_size=None)``."""

    base_class = nn.ConvTranspose1d
    kind = "conv_transpose1d"
    out_dim = 1

    def op(self, x, weight, bias, output_size=None):
        b = self.base
        out_pad = b._output_padding(x, output_size, b.stride, b.padding, b.kernel_size, 1, b.dilation)
        return F.conv_transpose1d(x, weight, bias, b.stride, b.padding, out_pad, 1, b.dilation)


class LoRALinear(LoRALayer):
    """Adapters on ``nn.Linear``: input ``[..., I]`` -> output ``[..., O]``."""

    base_class = nn.Linear
    kind = "linear"

    def op(self, x, weight, bias, *args, **kwargs):
        return F.linear(x, weight, bias)

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        return v


class LoRAEmbedding(LoRALayer):
    """Full-delta adapters on ``nn.Embedding`` (e.g. a trained speaker row): ``[...]`` ids -> ``[..., D]``."""

    base_class = nn.Embedding
    kind = "embedding"

    def op(self, x, weight, bias, *args, **kwargs):
        b = self.base
        return F.embedding(x, weight, b.padding_idx, b.max_norm, b.norm_type, b.scale_grad_by_freq, b.sparse)


WRAPPERS: dict[type[nn.Module], type[LoRALayer]] = {
    nn.Conv1d: LoRAConv1d,
    nn.ConvTranspose1d: LoRAConvTranspose1d,
    nn.Linear: LoRALinear,
    nn.Embedding: LoRAEmbedding,
}


def wrapper_for(module: nn.Module) -> type[LoRALayer] | None:
    """The adapter wrapper class for ``module`` (by isinstance), or None if unsupported."""
    for cls, wrapper in WRAPPERS.items():
        if isinstance(module, cls):
            return wrapper
    return None
