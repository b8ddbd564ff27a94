"""Merge adapters into a standard RVC model, and extract adapters from fully fine-tuned RVC models."""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from rvc_lora.checkpoint import load_rvc, save_rvc
from rvc_lora.generator_lora import GENERATOR_TARGETS, SynthesizerLoRA
from rvc_lora.lora import extract_lowrank, extracted_tensors, save_adapter, weight_norm_effective
from rvc_lora.utils import RVCLoraError

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
MAX_STRENGTH = 10.0  # |strength| above this needs force: weights that far from training give noise
LAYER_KINDS = {nn.Conv1d: "conv1d", nn.ConvTranspose1d: "conv_transpose1d", nn.Linear: "linear"}  # for extraction


def parse_adapter_spec(spec: str) -> tuple[Path, float]:
    """``"alice.safetensors:0.7"`` -> (path, 0.7); a spec without a numeric suffix has strength 1."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(spec), 1.0


def check_strength(strength: float, adapter: str | os.PathLike = "adapter", force: bool = False) -> float:
    """The check every adapter strength passes (merge, convert, ``Converter``, servers): returns it as float.

    A strength must be a finite number and, unless ``force``, within ``-MAX_STRENGTH..MAX_STRENGTH``.
    Raises RVCLoraError naming the adapter.
    """
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise RVCLoraError(f"{adapter}: strength {strength!r} is not a number") from None
    if not math.isfinite(value):
        raise RVCLoraError(f"{adapter}: strength {strength} is not a finite number")
    if abs(value) > MAX_STRENGTH and not force:
        raise RVCLoraError(f"{adapter}: strength {value:g} is outside {-MAX_STRENGTH:g}..{MAX_STRENGTH:g}, far beyond "
                           "what an adapter was trained for (--force, or force=True, applies it anyway)")
    return value


def attach_adapters(synth: nn.Module, adapters: list[tuple[Path, float]], force: bool = False,
                    base_desc: str = "the base") -> SynthesizerLoRA:
    """Load adapter files (with strengths, see :func:`check_strength`) onto a synthesizer as live adapters."""
    adapters = [(Path(path), check_strength(strength, path, force)) for path, strength in adapters]
    host = SynthesizerLoRA(synth, base_desc=base_desc)
    for i, (path, strength) in enumerate(adapters):
        host.load_adapter(path, strength=strength, adapter_name=f"adapter{i}", force=force)
    return host


def merge_adapters(base: str | os.PathLike, adapters: list[tuple[Path, float]], out: str | os.PathLike,
                   dtype: str = "fp16", force: bool = False, info: str | None = None) -> Path:
    """Write ``base`` + sum of strength * adapter as an RVC small model with the base's key set."""
    if not adapters:
        raise RVCLoraError("give at least one --adapter to merge")
    if dtype not in DTYPES:
        raise RVCLoraError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    for path, strength in adapters:  # before the base is read: a typo fails at once
        check_strength(strength, path, force)
    ckpt = load_rvc(base)
    if ckpt.kind != "generator":
        raise RVCLoraError(f"{base}: is a discriminator file; merge needs a generator (G) base")
    host = attach_adapters(ckpt.model, adapters, force=force, base_desc=str(base))
    synth = host.merge_and_unload()
    names = ", ".join(f"{p.name}:{s:g}" for p, s in adapters)
    return save_rvc(synth, out, version=ckpt.version, f0=ckpt.f0, sample_rate=ckpt.sample_rate,
                    info=info or f"rvc-lora merge of {Path(base).name} + {names}", dtype=DTYPES[dtype])


@dataclass
class ExtractRow:
    """One layer of an extraction report (``rank`` 0 for layers stored as full diffs)."""

    module: str
    rank: int
    rel_error: float
    bytes: int
    stored_as: str


def _effective_weights(state: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    if f"{module}.weight_g" in state:
        return weight_norm_effective(state[f"{module}.weight_g"].float(), state[f"{module}.weight_v"].float())
    return state[f"{module}.weight"].float()


def extract_adapter(base: str | os.PathLike, tuned: str | os.PathLike, out: str | os.PathLike,
                    rank: int | None = None, energy: float | None = None, diff_only: bool = False,
                    targets: list[str] | None = None, dtype: str = "fp16", progress: bool = False) -> list[ExtractRow]:
    """Factor (tuned - base) of each target layer's effective weight into an adapter file.

    Targets are globs on generator module names (default ``ups.*``, ``resblocks.*``). Layers whose
    low-rank factors would be larger than the dense delta (or all, with ``diff_only``) store the delta.
    ``progress`` shows a progress bar with ETA on stderr.
    """
    if not diff_only and (rank is None) == (energy is None):
        raise RVCLoraError("give exactly one of --rank or --energy (or --diff-only)")
    base_ckpt, tuned_ckpt = load_rvc(base), load_rvc(tuned)
    for attr in ("version", "f0", "sample_rate"):
        if getattr(base_ckpt, attr) != getattr(tuned_ckpt, attr):
            raise RVCLoraError(
                f"{tuned}: {attr} {getattr(tuned_ckpt, attr)!r} differs from the base's {getattr(base_ckpt, attr)!r}"
            )
    host = SynthesizerLoRA(base_ckpt.model, base_desc=str(base))
    base_state = {k[4:]: v for k, v in base_ckpt.model.state_dict().items() if k.startswith("dec.")}
    tuned_state = {k[4:]: v for k, v in tuned_ckpt.model.state_dict().items() if k.startswith("dec.")}
    patterns = targets or list(GENERATOR_TARGETS)
    modules = []
    for name, module in base_ckpt.model.dec.named_modules():
        kind = LAYER_KINDS.get(type(module))
        if kind and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            modules.append((name, kind))
    if not modules:
        raise RVCLoraError(f"target patterns {patterns} match no generator layer")
    tensors: dict[str, torch.Tensor] = {}
    rows: list[ExtractRow] = []
    for name, kind in tqdm(modules, desc="extract", unit="layer", disable=not progress):
        delta = _effective_weights(tuned_state, name) - _effective_weights(base_state, name)
        bias_delta = None
        if f"{name}.bias" in base_state:
            bias_delta = tuned_state[f"{name}.bias"].float() - base_state[f"{name}.bias"].float()
        path = f"dec.{name}"
        if diff_only:
            tensors[f"{path}.diff"] = delta
            if bias_delta is not None and bool(bias_delta.ne(0).any()):
                tensors[f"{path}.diff_b"] = bias_delta
            rows.append(ExtractRow(path, 0, 0.0, delta.numel() * 2, "diff"))
            continue
        layer = extract_lowrank(delta, kind, rank=rank, energy=energy)
        tensors.update(extracted_tensors(path, layer, delta, bias_delta))
        rows.append(ExtractRow(path, 0 if layer.use_diff else layer.rank, 0.0 if layer.use_diff else layer.rel_error,
                               layer.bytes_diff if layer.use_diff else layer.bytes_lowrank,
                               "diff" if layer.use_diff else "lora"))
    module_paths = [r.module for r in rows]
    metadata = {
        "targets": module_paths,
        "rank": rank,
        "energy": energy,
        "rvc_version": base_ckpt.version,
        "sample_rate": base_ckpt.sample_rate,
        "f0": base_ckpt.f0,
        "base_fingerprint": host.fingerprint(module_paths),
        "training": {"extracted_from": Path(tuned).name, "base": Path(base).name},
    }
    save_adapter(out, tensors, metadata, dtype=dtype)
    return rows
