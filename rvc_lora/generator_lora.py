"""RVC-specific adapter policy: which synthesizer layers get LoRA, under which names, on which base.

``GeneratorLoRA`` adapts the generator (``dec``): its upsampling ConvTranspose1d layers (``ups.*``)
and ResBlock Conv1d layers (``resblocks.*``) by default, optionally ``conv_pre``, ``conv_post``,
``noise_convs.*`` and ``cond``. ``SynthesizerLoRA`` adds optional adapters on the flow and the text
encoder. Module paths in adapter files are RVC state-dict paths (``dec.ups.0``), and every adapter
records a fingerprint of the base tensors it modifies so it is never applied to the wrong base.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rvc_lora.lora import (
    AdapterFile,
    LoRAConfig,
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
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha", ".diff_b", ".diff"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return _module_of(key)


class AdapterHost:
    """Adapters on named parts of a model, addressed by full state-dict paths (``<prefix><name>``).

    ``parts`` maps a prefix (``"dec."``) to the module it names. A snapshot of the parts' tensors in
    RVC's stored form (``weight_g``/``weight_v``, fp16) is kept to fingerprint the base; create the host
    on the base as loaded, before anything folds its weight norm.
    """

    def __init__(self, parts: dict[str, nn.Module], info: dict[str, Any] | None = None):
        self.parts = parts
        self.info = dict(info or {})
        self._base_state: dict[str, torch.Tensor] = {}
        for prefix, module in parts.items():
            for key, value in module.state_dict().items():
                self._base_state[prefix + key] = value.detach().to("cpu", torch.float16, copy=True)
        self.adapters: dict[str, dict[str, Any]] = {}
        self.embedding: nn.Embedding | None = None  # set by hosts that also own the speaker embedding
        self._embedding_base: torch.Tensor | None = None
        self._embedding_deltas: dict[str, tuple[torch.Tensor, float]] = {}

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
        """Load an adapter file (or tensors) as a new adapter; returns its name.

        The file's base fingerprint must match this base unless ``force`` is set.
        """
        if isinstance(source, dict):
            tensors, metadata, label = source, {}, "adapter tensors"
        else:
            adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
            tensors, metadata, label = adapter.tensors, adapter.metadata, str(adapter.path)
        name = adapter_name or f"adapter{len(self.adapters)}"
        if name in self.adapters:
            raise RVCLoraError(f"an adapter named {name!r} is already loaded")
        tensors = dict(tensors)
        speaker_diff = tensors.pop(EMBEDDING_DIFF_KEY, None)
        if speaker_diff is not None and self.embedding is None:
            raise RVCLoraError(f"{label}: carries a trained speaker row ({EMBEDDING_DIFF_KEY}); load it onto a "
                               "whole synthesizer (SynthesizerLoRA), not a generator alone")
        if speaker_diff is not None and tuple(speaker_diff.shape) != tuple(self.embedding.weight.shape):
            raise RVCLoraError(f"{label}: {EMBEDDING_DIFF_KEY} has shape {tuple(speaker_diff.shape)} but the base's "
                               f"speaker embedding is {tuple(self.embedding.weight.shape)}")
        by_prefix: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            prefix = next((p for p in self.parts if key.startswith(p)), None)
            if prefix is None:
                raise RVCLoraError(
                    f"{label}: tensor {key!r} targets no adapted part (expected keys under "
                    f"{', '.join(self.parts)})"
                )
            by_prefix.setdefault(prefix, {})[key] = value
        modules = sorted({_adapter_module(k) for k in tensors})
        check_fingerprint(metadata.get("base_fingerprint"), self.fingerprint(modules), label,
                          self.info.get("base_desc", "this base"), force=force)
        loaded: list[str] = []
        for prefix, part_tensors in by_prefix.items():
            try:
                paths = load_lora_state_dict(self.parts[prefix], part_tensors, name, strength, prefix=prefix)
            except (RVCLoraError, ValueError) as exc:
                raise RVCLoraError(f"{label}: {exc}") from None
            loaded += [prefix + p for p in paths]
        self.adapters[name] = {"modules": loaded, "configs": {}, "metadata": metadata, "strength": strength}
        if speaker_diff is not None:
            self._embedding_deltas[name] = (speaker_diff.float(), strength)
            self._apply_embedding_deltas()
        return name

    def _apply_embedding_deltas(self) -> None:
        """Speaker-row deltas are small: they live in the embedding weight (base + sum strength * diff)."""
        if self.embedding is None:
            return
        weight = self.embedding.weight
        if self._embedding_base is None:
            self._embedding_base = weight.detach().clone()
        total = self._embedding_base.clone()
        for diff, strength in self._embedding_deltas.values():
            total += strength * diff.to(total)
        with torch.no_grad():
            weight.copy_(total)

    # -- state -------------------------------------------------------------------------------------------
    def lora_parameters(self, adapter_name: str | None = None) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for module in self.parts.values():
            params += lora_parameters(module, adapter_name)
        return params

    def adapter_state_dict(self, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        """Tensors of one adapter under RVC paths: ``dec.ups.0.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
        out: dict[str, torch.Tensor] = {}
        for prefix, module in self.parts.items():
            if any(adapter_name in layer.kind for layer in lora_layers(module).values()):
                out.update(lora_state_dict(module, adapter_name, prefix=prefix))
        if not out:
            raise RVCLoraError(f"no adapter named {adapter_name!r}")
        return out

    def load_adapter_state_dict(self, tensors: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
        """Copy tensors saved by ``adapter_state_dict`` into an existing adapter (e.g. on resume)."""
        own = self.adapter_state_dict(adapter_name)
        if set(own) != set(tensors):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise RVCLoraError(f"adapter tensors do not match: missing {missing[:4]}, unexpected {extra[:4]}")
        params = {}
        for prefix, module in self.parts.items():
            for qname, layer in lora_layers(module).items():
                if adapter_name in layer.lora_down:
                    params[f"{prefix}{qname}.lora_down.weight"] = layer.lora_down[adapter_name].weight
                    params[f"{prefix}{qname}.lora_up.weight"] = layer.lora_up[adapter_name].weight
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(tensors[key])

    def metadata(self, adapter_name: str = "default") -> dict[str, Any]:
        """Metadata that describes an adapter for its file: rank, alpha, targets, base, fingerprint."""
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
            meta.update(rank=first.rank, alpha=first.alpha, rs_lora=first.rs_lora, dropout=first.dropout)
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
        for module in self.parts.values():
            set_adapter_strength(module, adapter_name, strength)
        if adapter_name in self._embedding_deltas:
            self._embedding_deltas[adapter_name] = (self._embedding_deltas[adapter_name][0], strength)
            self._apply_embedding_deltas()

    def merge(self) -> None:
        for module in self.parts.values():
            merge_lora(module)

    def unmerge(self) -> None:
        for module in self.parts.values():
            unmerge_lora(module)

    def enable_adapters(self, adapter_name: str | None = None) -> None:
        for module in self.parts.values():
            set_adapters_enabled(module, True, adapter_name)

    def disable_adapters(self, adapter_name: str | None = None) -> None:
        for module in self.parts.values():
            set_adapters_enabled(module, False, adapter_name)

    def remove_adapter(self, adapter_name: str) -> None:
        """Drop an adapter from every layer (unmerging first), e.g. to swap voices."""
        self.unmerge()
        for module in self.parts.values():
            for layer in lora_layers(module).values():
                if adapter_name in layer.kind:
                    layer.delete_adapter(adapter_name)
        self.adapters.pop(adapter_name, None)
        if self._embedding_deltas.pop(adapter_name, None) is not None:
            self._apply_embedding_deltas()

    def merge_and_unload_parts(self) -> None:
        for prefix, module in list(self.parts.items()):
            self.parts[prefix] = merge_and_unload(module)

    def summary(self) -> str:
        """A table of trainable vs total parameters per adapted layer."""
        lines = [f"{'layer':<32}{'trainable':>12}{'total':>14}"]
        trainable = total = 0
        for prefix, module in self.parts.items():
            for row in parameter_summary(module):
                if row.target == "total":
                    continue
                lines.append(f"{prefix + row.target:<32}{row.trainable:>12,}{row.total:>14,}")
                trainable += row.trainable
                total += row.total
        lines.append(f"{'total':<32}{trainable:>12,}{total:>14,}")
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
        super().__init__({"dec.": generator}, info)
        if config is not None:
            self.add("dec.", replace(config, targets=config.targets or GENERATOR_TARGETS), adapter_name)

    @property
    def generator(self) -> nn.Module:
        return self.parts["dec."]

    def merge_and_unload(self) -> nn.Module:
        """Merge enabled adapters and return the plain generator (original classes, no LoRA left)."""
        self.merge_and_unload_parts()
        return self.generator


class SynthesizerLoRA(AdapterHost):
    """Adapters on a whole RVC synthesizer: the generator, and optionally the flow and text encoder.

    Adapter modules are named by RVC state-dict paths (``dec.ups.0``, ``flow.flows.0.enc.in_layers.1``).
    """

    def __init__(self, synth: nn.Module, config: LoRAConfig | None = None, flow: bool = False,
                 enc_p: bool = False, adapter_name: str = "default", base_desc: str | None = None):
        info = _synth_info(synth)
        if base_desc:
            info["base_desc"] = base_desc
        super().__init__({"dec.": synth.dec, "flow.": synth.flow, "enc_p.": synth.enc_p}, info)
        self.synth = synth
        self.embedding = synth.emb_g if isinstance(synth.emb_g, nn.Embedding) else None
        if config is None:
            return
        self.add("dec.", replace(config, targets=config.targets or GENERATOR_TARGETS), adapter_name)
        if flow:
            self.add("flow.", replace(config, targets=FLOW_TARGETS), adapter_name)
        if enc_p:
            self.add("enc_p.", replace(config, targets=ENC_P_TARGETS), adapter_name)

    def merge_and_unload(self) -> nn.Module:
        """Merge enabled adapters into the synthesizer and return it with plain modules only."""
        self.merge_and_unload_parts()
        self.synth.dec = self.parts["dec."]
        self.synth.flow = self.parts["flow."]
        self.synth.enc_p = self.parts["enc_p."]
        return self.synth


def describe_adapter(path: str | os.PathLike) -> str:
    """A human-readable summary of an adapter file: rank, alpha, targets, parameters, size, fingerprint."""
    adapter = read_adapter(path)
    meta = adapter.metadata
    ranks = sorted(set(adapter.ranks().values()))
    n_params = sum(t.numel() for k, t in adapter.tensors.items() if not k.endswith(".alpha"))
    size = Path(path).stat().st_size
    modules = sorted(adapter.modules)
    parts = sorted({m.split(".")[0] for m in modules})
    lines = [
        f"file:        {path}",
        f"format:      {meta.get('format', 'unknown')} v{meta.get('format_version', '?')} ({meta.get('dtype', '?')})",
        f"rank:        {', '.join(map(str, ranks)) or 'full diff'}",
        f"alpha:       {meta.get('alpha', 'per module')}",
        f"modules:     {len(modules)} in {', '.join(parts)} "
        f"({sum(1 for k in adapter.modules.values() if k == 'diff')} stored as full diffs)",
        f"parameters:  {n_params:,}",
        f"size:        {size / 1e6:.2f} MB",
        f"base:        RVC {meta.get('rvc_version', '?')}, {meta.get('sample_rate', '?')} Hz, "
        f"f0={meta.get('f0', '?')}",
        f"fingerprint: {meta.get('base_fingerprint', 'none')}",
    ]
    if meta.get("training"):
        lines.append(f"training:    {meta['training']}")
    return "\n".join(lines)
