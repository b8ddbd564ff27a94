"""Put adapter wrappers into any module tree by name pattern, and take them out again.

Module names are the qualified names of ``root.named_modules()`` (``"ups.0"``, ``"resblocks.3.convs1.1"``);
target patterns are ``fnmatch`` globs on them (``*`` also matches dots). Containers that match a pattern
are passed over; a matched module that holds weights but that the algorithm cannot adapt is refused
(every algorithm adapts Conv1d / ConvTranspose1d / Linear; a full delta also an Embedding).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import NamedTuple

import torch
from torch import nn

from rvc_lora.models.weight_norm import fold_weight_norm as _fold
from rvc_lora.models.weight_norm import has_weight_norm

from ..utils import RVCLoraError
from .algorithms import ALGORITHMS, part_key, split_key
from .config import LoRAConfig
from .layers import FORWARD_MODES, LoRALayer, wrapper_for


class LoRATargetError(RVCLoraError, ValueError):
    """A target pattern or module name that does not fit the model."""


def _candidates(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that a pattern could address, without descending into LoRA wrappers or target leaves."""
    out: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            q = f"{prefix}.{child_name}" if prefix else child_name
            out.append((q, child))
            if isinstance(child, LoRALayer) or wrapper_for(child) is not None:
                continue
            walk(child, q)

    walk(root, "")
    return out


def _set_module(root: nn.Module, qname: str, new: nn.Module) -> None:
    parent_name, _, child = qname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _wrap(root: nn.Module, qname: str, module: nn.Module, fold: bool) -> LoRALayer:
    if isinstance(module, LoRALayer):
        return module
    wrapper = wrapper_for(module)
    if wrapper is None:
        raise LoRATargetError(
            f"module '{qname}' is a {type(module).__name__}; LoRA supports Conv1d, ConvTranspose1d and Linear"
        )
    if has_weight_norm(module):
        if not fold:
            raise LoRATargetError(f"module '{qname}' is weight-normed and fold_weight_norm=False")
        _fold(module)
    layer = wrapper(module, name=qname)
    _set_module(root, qname, layer)
    return layer


def _adaptable(module: nn.Module, kinds: frozenset[str]) -> bool:
    wrapper = type(module) if isinstance(module, LoRALayer) else wrapper_for(module)
    return wrapper is not None and wrapper.kind in kinds


def find_targets(root: nn.Module, patterns: tuple[str, ...] | list[str], algorithm: str = "lora") -> list[str]:
    """Qualified names of the modules matched by ``patterns`` that ``algorithm`` adapts (in tree order).

    Raises ``LoRATargetError`` if a pattern matches nothing or matches a module with weights that the
    algorithm cannot adapt.
    """
    if not patterns:
        raise LoRATargetError("no LoRA target patterns given")
    kinds = ALGORITHMS[algorithm].kinds
    supported = "Conv1d, ConvTranspose1d, Linear" + (" and Embedding" if "embedding" in kinds else "")
    cands = _candidates(root)
    chosen: dict[str, None] = {}
    for pat in patterns:
        hits = 0
        for qname, module in cands:
            if not fnmatchcase(qname, pat):
                continue
            if _adaptable(module, kinds):
                chosen[qname] = None
                hits += 1
            elif any(True for _ in module.parameters(recurse=False)):
                raise LoRATargetError(
                    f"pattern '{pat}' matches '{qname}', a {type(module).__name__}; {algorithm} adapts only "
                    f"{supported}"
                )
        if hits == 0:
            names = [q for q, m in cands if _adaptable(m, kinds)]
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise LoRATargetError(f"LoRA target pattern '{pat}' matches no {supported} module; "
                                  f"available: {shown or 'none'}")
    order = {q: i for i, (q, _) in enumerate(cands)}
    return sorted(chosen, key=order.__getitem__)


def inject_lora(root: nn.Module, config: LoRAConfig, adapter_name: str = "default",
                fold_weight_norm: bool = True) -> list[str]:
    """Wrap every module matched by ``config.targets`` and add a fresh ``config.algorithm`` adapter to it.

    Weight norm on a target is folded first. Modules already wrapped get one more adapter. The base
    parameters of wrapped modules are frozen. Returns the qualified names adapted.
    """
    names = find_targets(root, config.targets, config.algorithm)
    for qname in names:
        layer = _wrap(root, qname, root.get_submodule(qname), fold_weight_norm)
        layer.add_adapter(adapter_name, config)
    return names


def lora_layers(root: nn.Module) -> dict[str, LoRALayer]:
    """All LoRA wrappers under ``root`` by qualified name (``""`` if root itself is one)."""
    return {q: m for q, m in root.named_modules() if isinstance(m, LoRALayer)}


def lora_parameters(root: nn.Module, adapter_name: str | None = None) -> list[nn.Parameter]:
    """Adapter parameters (factors, diffs, magnitudes, bias deltas) of one adapter, or of all if None."""
    params: list[nn.Parameter] = []
    for layer in lora_layers(root).values():
        for name, adapter in layer.adapters.items():
            if adapter_name is None or name == adapter_name:
                params.extend(adapter.parameters())
    return params


def freeze_non_lora(root: nn.Module) -> int:
    """Set ``requires_grad=False`` on every parameter that is not a LoRA parameter; returns the count."""
    keep = {id(p) for p in lora_parameters(root)}
    n = 0
    for p in root.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
            n += 1
    return n


def lora_state_dict(root: nn.Module, adapter_name: str = "default",
                    prefix: str = "") -> dict[str, torch.Tensor]:
    """Adapter tensors under adapter-file keys ``<prefix><path><suffix>``: kohya's ``.lora_down.weight``,
    ``.lora_up.weight``, ``.alpha`` (0-d fp32) for LoRA, LyCORIS' ``.hada_w1_a`` ... ``.lokr_w1`` ...
    ``.dora_scale`` for the others, ``.diff`` for full deltas, ``.diff_b`` for bias deltas."""
    out: dict[str, torch.Tensor] = {}
    found = False
    for qname, layer in lora_layers(root).items():
        if adapter_name not in layer.adapters:
            continue
        found = True
        for part, t in layer.adapters[adapter_name].parts().items():
            out[part_key(f"{prefix}{qname}", part)] = t.detach().clone()
    if not found:
        raise KeyError(f"no LoRA layer holds an adapter named '{adapter_name}'")
    return out


def group_adapter_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split ``{<path><suffix>: tensor}`` by module path into ``{path: {part: tensor}}`` (see ``split_key``)."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        split = split_key(key)
        if split is None:
            raise ValueError(f"adapter tensor '{key}' has an unknown suffix")
        groups.setdefault(split[0], {})[split[1]] = t
    return groups


def load_lora_state_dict(root: nn.Module, tensors: dict[str, torch.Tensor], adapter_name: str = "default",
                         strength: float = 1.0, prefix: str = "", fold_weight_norm: bool = True) -> list[str]:
    """Load adapter tensors (naming of ``lora_state_dict``) as adapter ``adapter_name``.

    Modules not yet wrapped are wrapped (folding weight norm). Keys must start with ``prefix``, which is
    stripped. Raises ``LoRATargetError`` naming module paths absent from ``root``. Returns paths loaded.
    """
    stripped = {}
    for key, t in tensors.items():
        if not key.startswith(prefix):
            raise LoRATargetError(f"adapter key '{key}' does not start with the expected prefix '{prefix}'")
        stripped[key[len(prefix):]] = t
    groups = group_adapter_tensors(stripped)
    known = dict(_candidates(root))
    missing = [q for q in groups if q not in known]
    if missing:
        raise LoRATargetError(f"adapter modules not found in the model: {', '.join(missing[:8])}"
                              + (" ..." if len(missing) > 8 else ""))
    for qname, parts in groups.items():
        layer = _wrap(root, qname, known[qname], fold_weight_norm)
        set_adapter_parts(layer, adapter_name, parts)
        layer.set_strength(adapter_name, strength)
    return list(groups)


def set_adapter_parts(layer: LoRALayer, adapter_name: str, parts: dict[str, torch.Tensor]) -> None:
    """Give ``layer`` adapter ``adapter_name`` from one module's parts (see ``group_adapter_tensors``);
    the algorithm is recognised from the parts. ``LoRATargetError`` naming the module if they do not fit."""
    try:
        layer.set_parts(adapter_name, parts)
    except ValueError as exc:
        raise LoRATargetError(str(exc)) from None


def merge_lora(root: nn.Module) -> None:
    """Merge every enabled adapter of every LoRA layer into its base weight."""
    for layer in lora_layers(root).values():
        layer.merge()


def unmerge_lora(root: nn.Module) -> None:
    """Undo ``merge_lora`` bit-exactly."""
    for layer in lora_layers(root).values():
        layer.unmerge()


def set_adapters_enabled(root: nn.Module, enabled: bool, adapter_name: str | None = None) -> None:
    """Enable or disable one adapter (or all) in every LoRA layer."""
    for layer in lora_layers(root).values():
        if adapter_name is not None and adapter_name not in layer.adapters:
            continue
        (layer.enable if enabled else layer.disable)(adapter_name)


def set_forward_mode(root: nn.Module, mode: str) -> None:
    """``"auto"`` (default), ``"rebuild"`` or ``"bypass"`` for every LoRA layer (see ``layers``)."""
    if mode not in FORWARD_MODES:
        raise ValueError(f"forward mode must be one of {FORWARD_MODES}, got {mode!r}")
    for layer in lora_layers(root).values():
        layer.forward_mode = mode


def set_adapter_strength(root: nn.Module, adapter_name: str, strength: float) -> None:
    """Set the strength of ``adapter_name`` in every layer holding it."""
    for layer in lora_layers(root).values():
        if adapter_name in layer.adapters:
            layer.set_strength(adapter_name, strength)


def merge_and_unload(root: nn.Module) -> nn.Module:
    """Merge all enabled adapters and put the plain base modules (original classes) back; returns root."""
    layers = lora_layers(root)
    for qname in sorted(layers, key=lambda q: -q.count(".")):
        base = layers[qname].unload()
        if qname == "":
            return base
        _set_module(root, qname, base)
    return root


class SummaryRow(NamedTuple):
    target: str
    trainable: int
    total: int


def parameter_summary(root: nn.Module) -> list[SummaryRow]:
    """One row per LoRA layer (its trainable adapter params, its total params) and a final ``"total"``."""
    rows = []
    for qname, layer in lora_layers(root).items():
        trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        rows.append(SummaryRow(qname, trainable, sum(p.numel() for p in layer.parameters())))
    rows.append(SummaryRow("total", sum(p.numel() for p in root.parameters() if p.requires_grad),
                           sum(p.numel() for p in root.parameters())))
    return rows
