"""RVC-specific adapter policy: which synthesizer layers get LoRA, under which names, on which base.

``GeneratorLoRA`` adapts the generator (``dec``): its upsampling ConvTranspose1d layers (``ups.*``)
and ResBlock Conv1d layers (``resblocks.*``) by default, optionally ``conv_pre``, ``conv_post``,
``noise_convs.*`` and ``cond``. ``SynthesizerLoRA`` adds optional adapters on the flow and the text
encoder. Module paths in adapter files are RVC state-dict paths (``dec.ups.0``), and every adapter
records a fingerprint of the base tensors it modifies so it is never applied to the wrong base.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rvc_lora.lora import (
    AdapterFile,
    LoRAConfig,
    LoRALayer,
    check_fingerprint,
    fingerprint_tensors,
    inject_lora,
    load_lora_state_dict,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    parameter_summary,
    read_adapter,
    save_adapter,
    set_adapter_strength,
    set_adapters_enabled,
    unmerge_lora,
)
from rvc_lora.lora.algorithms import split_key
from rvc_lora.lora.inject import group_adapter_tensors
from rvc_lora.utils import RVCLoraError

GENERATOR_TARGETS = ("ups.*", "resblocks.*")
OPTIONAL_GENERATOR_TARGETS = ("conv_pre", "conv_post", "noise_convs.*", "cond")
FLOW_TARGETS = ("flows.*.pre", "flows.*.post", "flows.*.enc.in_layers.*", "flows.*.enc.res_skip_layers.*")
# The attention modules own their relative-position tables (emb_rel_k / emb_rel_v), so their convolutions
# are named one by one; FFN blocks hold only their two convolutions.
ENC_P_TARGETS = ("encoder.attn_layers.*.conv_*", "encoder.ffn_layers.*.conv_*")
PART_PREFIXES = ("dec.", "flow.", "enc_p.")
EMBEDDING_DIFF_KEY = "emb_g.diff"  # a trained speaker row: the full [speakers, gin] delta, zero elsewhere


def _module_of(key: str) -> str:
    """Module path of a state-dict key (``dec.ups.0.weight_g`` -> ``dec.ups.0``)."""
    return key.rsplit(".", 1)[0]


def _adapter_module(key: str) -> str:
    """Module path of an adapter-file key (``dec.ups.0.lora_down.weight`` -> ``dec.ups.0``)."""
    split = split_key(key)
    return split[0] if split is not None else _module_of(key)


class AdapterHost:
    """Adapters on named parts of a model, addressed by full state-dict paths (``<prefix><name>``).

    ``parts`` maps a prefix (``"dec."``) to the module it names; ``root`` is the module that holds them
    all, reached by ``root_prefix`` (the synthesizer and ``""``, or the generator itself and ``"dec."``).
    A snapshot of the parts' tensors in RVC's stored form (``weight_g``/``weight_v``, fp16) is kept to
    fingerprint the base; create the host on the base as loaded, before anything folds its weight norm.
    Every change of strengths, merging and swapping goes through the layers' own merge (``LoRALayer``).
    """

    def __init__(self, parts: dict[str, nn.Module], root: nn.Module, root_prefix: str = "",
                 info: dict[str, Any] | None = None):
        self.parts = parts
        self.info = dict(info or {})
        self.root, self.root_prefix = root, root_prefix
        self._base_state: dict[str, torch.Tensor] = {}
        for prefix, module in parts.items():
            for key, value in module.state_dict().items():
                self._base_state[prefix + key] = value.detach().to("cpu", torch.float16, copy=True)
        self.adapters: dict[str, dict[str, Any]] = {}

    @property
    def speaker_table(self) -> bool:
        """True if adapters may carry a trained speaker row (the root owns the ``emb_g`` table)."""
        return isinstance(getattr(self.root, "emb_g", None), (nn.Embedding, LoRALayer)) and not self.root_prefix

    # -- creating and loading adapters ---------------------------------------------------------------
    def add(self, prefix: str, config: LoRAConfig, adapter_name: str = "default") -> list[str]:
        """Inject a fresh (identity) adapter into the part ``prefix``; returns full module paths."""
        names = [prefix + n for n in inject_lora(self.parts[prefix], config, adapter_name)]
        entry = self.adapters.setdefault(adapter_name, {"modules": [], "configs": {}})
        entry["modules"] += names
        entry["configs"][prefix] = config
        return names

    def fingerprint(self, module_paths: Iterable[str]) -> str:
        """Fingerprint of the base tensors (as stored) of the given module paths."""
        paths = set(module_paths)
        return fingerprint_tensors({k: v for k, v in self._base_state.items() if _module_of(k) in paths})

    def load_adapter(
        self,
        source: str | os.PathLike | AdapterFile | dict[str, torch.Tensor],
        strength: float = 1.0,
        adapter_name: str | None = None,
        force: bool = False,
    ) -> str:
        """Load an adapter file (or tensors) of any algorithm as a new adapter; returns its name.

        The file's base fingerprint must match this base unless ``force`` is set. On an error nothing of
        the adapter stays loaded.
        """
        if isinstance(source, dict):
            tensors, metadata, label = source, {}, "adapter tensors"
        else:
            adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
            tensors, metadata, label = adapter.tensors, adapter.metadata, str(adapter.path)
        name = adapter_name or f"adapter{len(self.adapters)}"
        if name in self.adapters:
            raise RVCLoraError(f"an adapter named {name!r} is already loaded")
        prefixes = tuple(self.parts) + (("emb_g.",) if self.speaker_table else ())
        for key in tensors:
            if key.startswith("emb_g.") and not self.speaker_table:
                raise RVCLoraError(f"{label}: carries a trained speaker row ({EMBEDDING_DIFF_KEY}); load it onto a "
                                   "whole synthesizer (SynthesizerLoRA), not a generator alone")
            if not key.startswith(prefixes):
                raise RVCLoraError(f"{label}: tensor {key!r} targets no adapted part (expected keys under "
                                   f"{', '.join(self.parts)})")
        modules = sorted({_adapter_module(k) for k in tensors})
        check_fingerprint(metadata.get("base_fingerprint"), self.fingerprint(modules), label,
                          self.info.get("base_desc", "this base"), force=force)
        try:
            paths = load_lora_state_dict(self.root, dict(tensors), name, strength, prefix=self.root_prefix)
        except (RVCLoraError, ValueError) as exc:
            self._delete_from_layers(name)
            raise RVCLoraError(f"{label}: {exc}") from None
        self.adapters[name] = {"modules": [self.root_prefix + p for p in paths], "configs": {},
                               "metadata": metadata, "strength": strength}
        return name

    def replace_adapters(self, sources: list[tuple[str | os.PathLike | AdapterFile, float]],
                         force: bool = False) -> list[str]:
        """Make ``sources`` (adapter, strength) the loaded set, merged into the weights; returns their names.

        All-or-nothing: if any fails to load, the previous set stays loaded and merged as it was.
        """
        previous = list(self.adapters)
        loaded: list[str] = []
        try:
            for source, strength in sources:
                loaded.append(self.load_adapter(source, strength, self._fresh_name(), force=force))
        except Exception:
            for name in loaded:
                self.remove_adapter(name)
            raise
        for name in previous:
            self.remove_adapter(name)
        self.merge()
        return loaded

    def _fresh_name(self) -> str:
        n = len(self.adapters)
        while f"adapter{n}" in self.adapters:
            n += 1
        return f"adapter{n}"

    # -- state -------------------------------------------------------------------------------------------
    def layers(self) -> dict[str, LoRALayer]:
        """Every adapter wrapper under the root, by full state-dict path."""
        return {self.root_prefix + q: layer for q, layer in lora_layers(self.root).items()}

    def lora_parameters(self, adapter_name: str | None = None) -> list[nn.Parameter]:
        return lora_parameters(self.root, adapter_name)

    def adapter_state_dict(self, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        """Tensors of one adapter under adapter-file keys and RVC paths (``dec.ups.0.lora_down.weight`` ...)."""
        try:
            return lora_state_dict(self.root, adapter_name, prefix=self.root_prefix)
        except KeyError:
            raise RVCLoraError(f"no adapter named {adapter_name!r}") from None

    def load_adapter_state_dict(self, tensors: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
        """Copy tensors saved by ``adapter_state_dict`` into an existing adapter (e.g. on resume)."""
        own = self.adapter_state_dict(adapter_name)
        if set(own) != set(tensors):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise RVCLoraError(f"adapter tensors do not match: missing {missing[:4]}, unexpected {extra[:4]}")
        layers = self.layers()
        for path, parts in group_adapter_tensors(tensors).items():
            layers[path].adapters[adapter_name].load_parts(parts)

    def metadata(self, adapter_name: str = "default") -> dict[str, Any]:
        """Metadata that describes an adapter for its file: algorithm, rank, alpha, targets, base, fingerprint."""
        entry = self.adapters.get(adapter_name)
        if entry is None:
            raise RVCLoraError(f"no adapter named {adapter_name!r}")
        configs = entry["configs"]
        first = next(iter(configs.values()), None)
        meta: dict[str, Any] = {
            "targets": sorted(entry["modules"]),
            "target_patterns": {p: list(c.targets) for p, c in configs.items()},
            "base_fingerprint": self.fingerprint(entry["modules"]),
        }
        if first is not None:
            meta.update(algorithm=first.algorithm, rank=first.rank, alpha=first.alpha, rs_lora=first.rs_lora,
                        dropout=first.dropout)
            if first.algorithm == "lokr":
                meta.update(factor=first.factor, decompose_both=first.decompose_both)
        for key in ("rvc_version", "sample_rate", "f0"):
            if key in self.info:
                meta[key] = self.info[key]
        return meta

    def save_adapter(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None,
                     dtype: str = "fp16", adapter_name: str = "default",
                     speaker_row: tuple[int, torch.Tensor] | None = None) -> Path:
        """Write one adapter as safetensors with its metadata (``metadata`` adds e.g. training info).

        ``speaker_row`` = (row, full ``[speakers, gin]`` delta) stores a trained speaker embedding row as
        ``emb_g.diff``, which ``load_adapter`` applies.
        """
        meta = self.metadata(adapter_name)
        if metadata:
            meta["training"] = metadata
        tensors = self.adapter_state_dict(adapter_name)
        if speaker_row is not None:
            meta["speaker_row"] = int(speaker_row[0])
            tensors[EMBEDDING_DIFF_KEY] = speaker_row[1].detach()
        return save_adapter(path, tensors, meta, dtype=dtype)

    # -- switching ---------------------------------------------------------------------------------------
    def set_strength(self, adapter_name: str, strength: float) -> None:
        set_adapter_strength(self.root, adapter_name, strength)

    def merge(self) -> None:
        merge_lora(self.root)

    def unmerge(self) -> None:
        unmerge_lora(self.root)

    def enable_adapters(self, adapter_name: str | None = None) -> None:
        set_adapters_enabled(self.root, True, adapter_name)

    def disable_adapters(self, adapter_name: str | None = None) -> None:
        set_adapters_enabled(self.root, False, adapter_name)

    def remove_adapter(self, adapter_name: str) -> None:
        """Drop an adapter from every layer (the others stay as they were, merged or not), e.g. to swap voices."""
        self._delete_from_layers(adapter_name)
        self.adapters.pop(adapter_name, None)

    def _delete_from_layers(self, adapter_name: str) -> None:
        for layer in self.layers().values():
            if adapter_name in layer.adapters:
                layer.delete_adapter(adapter_name)

    def merge_and_unload_root(self) -> nn.Module:
        """Merge enabled adapters and put the plain base modules back; returns the root."""
        return merge_and_unload(self.root)

    def summary(self) -> str:
        """A table of trainable vs total parameters per adapted layer."""
        lines = [f"{'layer':<32}{'trainable':>12}{'total':>14}"]
        rows = parameter_summary(self.root)
        for row in rows[:-1]:
            lines.append(f"{self.root_prefix + row.target:<32}{row.trainable:>12,}{row.total:>14,}")
        lines.append(f"{'total':<32}{sum(r.trainable for r in rows[:-1]):>12,}{sum(r.total for r in rows[:-1]):>14,}")
        return "\n".join(lines)


def _synth_info(synth: nn.Module) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for attr, key in (("version", "rvc_version"), ("sample_rate", "sample_rate"), ("f0", "f0")):
        if hasattr(synth, attr):
            info[key] = getattr(synth, attr)
    return info


class GeneratorLoRA(AdapterHost):
    """LoRA on an RVC generator (``synth.dec``), injected in place; module paths start with ``dec.``.

    ``config.targets`` empty means RVC's default: ``ups.*`` and ``resblocks.*``. Pass ``config=None``
    to attach nothing yet (then ``load_adapter`` files).
    """

    def __init__(self, generator: nn.Module, config: LoRAConfig | None = None,
                 adapter_name: str = "default", info: dict[str, Any] | None = None):
        super().__init__({"dec.": generator}, generator, "dec.", info)
        if config is not None:
            self.add("dec.", replace(config, targets=config.targets or GENERATOR_TARGETS), adapter_name)

    @property
    def generator(self) -> nn.Module:
        return self.parts["dec."]

    def merge_and_unload(self) -> nn.Module:
        """Merge enabled adapters and return the plain generator (original classes, no LoRA left)."""
        return self.merge_and_unload_root()


class SynthesizerLoRA(AdapterHost):
    """Adapters on a whole RVC synthesizer: the generator, and optionally the flow and text encoder.

    Adapter modules are named by RVC state-dict paths (``dec.ups.0``, ``flow.flows.0.enc.in_layers.1``).
    """

    def __init__(self, synth: nn.Module, config: LoRAConfig | None = None, flow: bool = False,
                 enc_p: bool = False, adapter_name: str = "default", base_desc: str | None = None):
        info = _synth_info(synth)
        if base_desc:
            info["base_desc"] = base_desc
        super().__init__({"dec.": synth.dec, "flow.": synth.flow, "enc_p.": synth.enc_p}, synth, "", info)
        self.synth = synth
        if config is None:
            return
        self.add("dec.", replace(config, targets=config.targets or GENERATOR_TARGETS), adapter_name)
        if flow:
            self.add("flow.", replace(config, targets=FLOW_TARGETS), adapter_name)
        if enc_p:
            self.add("enc_p.", replace(config, targets=ENC_P_TARGETS), adapter_name)

    def merge_and_unload(self) -> nn.Module:
        """Merge enabled adapters into the synthesizer and return it with plain modules only."""
        return self.merge_and_unload_root()


def describe_adapter(path: str | os.PathLike) -> str:
    """A human-readable summary of an adapter file: algorithm, rank, alpha, targets, parameters, size,
    fingerprint."""
    adapter = read_adapter(path)
    meta = adapter.metadata
    ranks = sorted(set(adapter.ranks().values()))
    n_params = sum(t.numel() for k, t in adapter.tensors.items() if not k.endswith(".alpha"))
    size = Path(path).stat().st_size
    modules = sorted(adapter.modules)
    parts = sorted({m.split(".")[0] for m in modules})
    kinds = Counter(adapter.modules.values())
    lines = [
        f"file:        {path}",
        f"format:      {meta.get('format', 'unknown')} v{meta.get('format_version', '?')} ({meta.get('dtype', '?')})",
        f"algorithm:   {', '.join(f'{k} ({n} modules)' for k, n in kinds.most_common())}",
        f"rank:        {', '.join(map(str, ranks)) or 'none'}",
        f"alpha:       {meta.get('alpha', 'per module')}",
        f"modules:     {len(modules)} in {', '.join(parts)}",
        f"parameters:  {n_params:,}",
        f"size:        {size / 1e6:.2f} MB",
        f"base:        RVC {meta.get('rvc_version', '?')}, {meta.get('sample_rate', '?')} Hz, "
        f"f0={meta.get('f0', '?')}",
        f"fingerprint: {meta.get('base_fingerprint', 'none')}",
    ]
    if meta.get("training"):
        lines.append(f"training:    {meta['training']}")
    return "\n".join(lines)
