"""Adapters merged into a loaded synthesizer and swapped in place, without wrappers on the hot path.

Each adapter file is "compiled" once into per-module weight deltas (``strength`` not applied), computed
by the LoRA layer classes of :mod:`rvc_lora.lora` on the folded base modules (the wrappers are never
inserted into the model). Merging writes ``W = W0 + sum(strength * delta)`` straight into the plain
weights, from a kept copy ``W0`` of the folded base, so swapping costs one pass over the touched weights.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rvc_lora.lora import AdapterFile, check_fingerprint, read_adapter
from rvc_lora.lora.inject import group_adapter_tensors, set_adapter_parts
from rvc_lora.lora.layers import wrapper_for
from rvc_lora.utils import RVCLoraError

CACHE_SIZE = 4


@dataclass
class CompiledAdapter:
    """Per-module deltas of one adapter file: ``deltas[path] = (dW like weight (fp32), db [O] or None)``."""

    path: Path
    stamp: tuple[int, int]
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor | None]]


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        raise RVCLoraError(f"adapter file not found: {path}") from None
    return st.st_mtime_ns, st.st_size


def compile_adapter(root: nn.Module, adapter: AdapterFile, device: torch.device) -> CompiledAdapter:
    """Turn an adapter file's tensors into fp32 weight deltas for the modules of ``root``.

    ``root`` must have weight norm folded on every target. Raises RVCLoraError naming the file if a target
    module is missing or of an unsupported type, or a tensor does not fit.
    """
    label = str(adapter.path)
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for path, parts in group_adapter_tensors(adapter.tensors).items():
        try:
            module = root.get_submodule(path)
        except AttributeError:
            raise RVCLoraError(f"{label}: targets module {path!r}, which this model does not have") from None
        if isinstance(module, nn.Embedding):  # a trained speaker row: a full delta of the table
            diff = parts.get("diff")
            if set(parts) != {"diff"} or diff is None or tuple(diff.shape) != tuple(module.weight.shape):
                raise RVCLoraError(f"{label}: {path!r} must be one full delta of shape "
                                   f"{tuple(module.weight.shape)}, got parts {sorted(parts)}")
            deltas[path] = (diff.detach().to(device, torch.float32).clone(), None)
            continue
        wrapper = wrapper_for(module)
        if wrapper is None:
            raise RVCLoraError(f"{label}: module {path!r} is a {type(module).__name__}, which LoRA cannot adapt")
        if module.weight.dtype != torch.float32:
            module = copy.deepcopy(module).float()  # deltas are computed in fp32
        try:
            layer = wrapper(module, path)  # a detached helper: never inserted into ``root``
            set_adapter_parts(layer, "a", parts)  # cast to the fp32 helper module's dtype
            delta = layer.delta_weight("a").detach().to(device, torch.float32).clone()
            bias = layer.lora_bias["a"].detach().to(device, torch.float32).clone() if "a" in layer.lora_bias else None
        except ValueError as exc:
            raise RVCLoraError(f"{label}: {exc}") from None
        deltas[path] = (delta, bias)
    return CompiledAdapter(adapter.path, _stamp(adapter.path), deltas)


class AdapterMerger:
    """Keeps the folded base weights of adapted modules and writes merged weights into ``root``.

    ``fingerprint(paths)`` returns the base fingerprint of module paths (see ``AdapterHost``);
    ``base_desc`` names the base in mismatch errors.
    """

    def __init__(self, root: nn.Module, fingerprint: Callable[[list[str]], str], base_desc: str,
                 device: torch.device) -> None:
        self.root = root
        self.fingerprint = fingerprint
        self.base_desc = base_desc
        self.device = device
        self._base: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._cache: OrderedDict[Path, CompiledAdapter] = OrderedDict()
        self.active: list[tuple[CompiledAdapter, float]] = []
        self.cache_hits = 0  # loads answered from the compiled-adapter cache
        self.cache_misses = 0  # loads that read and compiled the file

    def load(self, path: str | os.PathLike, force: bool = False) -> CompiledAdapter:
        """Read, check (base fingerprint) and compile an adapter file; cached by path, mtime and size."""
        path = Path(path)
        key = path.resolve()
        stamp = _stamp(path)
        cached = self._cache.get(key)
        if cached is not None and cached.stamp == stamp:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        adapter = read_adapter(path)
        modules = sorted(adapter.modules)
        check_fingerprint(adapter.metadata.get("base_fingerprint"), self.fingerprint(modules), str(path),
                          self.base_desc, force=force)
        compiled = compile_adapter(self.root, adapter, self.device)
        self._cache[key] = compiled
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return compiled

    @torch.no_grad()
    def apply(self, adapters: Sequence[tuple[CompiledAdapter, float]]) -> None:
        """Make the model weights ``W0 + sum(strength * delta)`` for ``adapters`` (empty = plain base)."""
        wanted: dict[str, list[tuple[torch.Tensor, torch.Tensor | None, float]]] = {}
        for compiled, strength in adapters:
            for path, (delta, bias) in compiled.deltas.items():
                wanted.setdefault(path, []).append((delta, bias, float(strength)))
        for path in set(wanted) | set(self._base):
            module = self.root.get_submodule(path)
            if path not in self._base:
                bias = getattr(module, "bias", None)  # embeddings have none
                bias0 = None if bias is None else bias.detach().clone()
                self._base[path] = (module.weight.detach().clone(), bias0)
            w0, b0 = self._base[path]
            terms = wanted.get(path, [])
            _write(module.weight, w0, [(d, s) for d, _, s in terms])
            if b0 is not None:
                _write(module.bias, b0, [(b, s) for _, b, s in terms if b is not None])
        self.active = list(adapters)


def _write(target: torch.Tensor, base: torch.Tensor, terms: list[tuple[torch.Tensor, float]]) -> None:
    """``target = base + sum(s * d)``, summed in fp32, stored in ``target``'s dtype."""
    if not terms:
        target.copy_(base)
        return
    if target.dtype == torch.float32:
        torch.add(base, terms[0][0], alpha=terms[0][1], out=target)
        for delta, s in terms[1:]:
            target.add_(delta, alpha=s)
        return
    acc = base.float()
    for delta, s in terms:
        acc = acc.add(delta, alpha=s)
    target.copy_(acc)
