"""Adapter files: safetensors with kohya / LyCORIS keys and JSON metadata; readers for peft and diff files.

Our keys per module path ``m``: LoRA ``m.lora_down.weight``, ``m.lora_up.weight``, ``m.alpha`` (0-d fp32)
(DoRA adds ``m.dora_scale``); LoHa ``m.hada_w1_a`` ... ``m.hada_w2_b`` + ``m.alpha``; LoKr ``m.lokr_w1``
(or ``_a``/``_b``), ``m.lokr_w2`` (or ``_a``/``_b``) + ``m.alpha``; or a full delta ``m.diff`` (shape of the
base weight); plus an optional bias delta ``m.diff_b``. The metadata's ``algorithm`` names the algorithm
an adapter was trained with. Every floating tensor and alpha must be finite.

Also read: peft's ``m.lora_A.weight`` / ``m.lora_B.weight`` and ``m.lora_A.<adapter>.weight`` (a leading
``base_model.model.`` is dropped). peft keeps the scale outside the tensors, in the ``adapter_config.json``
that ``save_pretrained`` writes beside ``adapter_model.safetensors``: ``lora_alpha`` and ``r`` (per module
through ``alpha_pattern`` / ``rank_pattern``), scale ``lora_alpha / r`` or ``lora_alpha / sqrt(r)`` with
``use_rslora``. That file is read; a peft adapter without it (and without an alpha in its metadata) is
refused, since its scale cannot be known. A directory saved by peft may be given instead of the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..utils import RVCLoraError, atomic_write
from .algorithms import ALGORITHMS, algorithm_of, part_key, split_key

FORMAT_NAME = "rvc-lora"
FORMAT_VERSION = "1"
DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}

_PEFT = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_PEFT_PREFIX = "base_model.model."
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


@dataclass
class AdapterFile:
    """A decoded adapter file: tensors in our naming, metadata decoded from JSON, per-module kind."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)  # module path -> algorithm ("lora", "diff", "loha" ...)

    def ranks(self) -> dict[str, int]:
        """Rank of each module that has one (LoKr with two full factors and full deltas have none)."""
        ranks = {}
        for module, kind in self.modules.items():
            cls = ALGORITHMS.get(kind)
            if cls is not None:
                parts = {p: self.tensors[part_key(module, p)] for p in cls.part_names
                         if part_key(module, p) in self.tensors}
                ranks[module] = cls.rank_of(parts)
        return {module: rank for module, rank in ranks.items() if rank}


def save_adapter(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any],
                 dtype: str = "fp16") -> Path:
    """Write ``tensors`` (cast to ``dtype``; ``.alpha`` always fp32) and metadata atomically.

    Every metadata value is stored JSON-encoded; ``format``, ``format_version`` and ``dtype`` are set here.
    """
    if dtype not in DTYPES:
        raise ValueError(f"adapter dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    target = DTYPES[dtype]
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"adapter tensor '{name}' is a {type(t).__name__}, not a torch.Tensor")
        t = t.detach().cpu()
        if name.endswith(".alpha"):
            t = t.to(torch.float32).reshape(())
        elif t.is_floating_point():
            t = t.to(target)
        out[name] = t.contiguous().clone()
    meta = {str(k): v for k, v in metadata.items()}
    meta.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, dtype=dtype)
    try:
        encoded = {k: json.dumps(v) for k, v in meta.items()}
    except TypeError as e:
        raise ValueError(f"adapter metadata must be JSON-serialisable: {e}") from e
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(out, str(tmp), metadata=encoded)
    return path


def _decode_meta(raw: dict[str, str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return meta


def _metadata_alpha(meta: dict[str, Any]) -> float | None:
    for key in ("alpha", "lora_alpha"):
        v = meta.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


@dataclass(frozen=True)
class _PeftScaling:
    """The scale settings of a peft LoRA adapter (``adapter_config.json``)."""

    source: Path
    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]

    def kohya_alpha(self, module: str, rank: int, fail) -> float:
        """The alpha that gives this module peft's scale under scale = alpha / rank."""
        r = int(_pattern_value(self.rank_pattern, module, self.r))
        if r != rank:
            raise fail(f"module '{module}' has rank {rank} but {self.source} says r = {r}")
        alpha = float(_pattern_value(self.alpha_pattern, module, self.lora_alpha))
        scale = alpha / math.sqrt(r) if self.use_rslora else alpha / r
        return scale * rank


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank/alpha pattern rule: the first pattern (a regex) that matches the end of the module name
    at a name boundary wins."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _read_peft_config(weights: Path) -> _PeftScaling | None:
    """The ``adapter_config.json`` beside ``weights`` (None when there is none)."""
    path = weights.parent / PEFT_CONFIG
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"peft_type {cfg['peft_type']!r}; only LORA adapters are supported")
        if cfg.get("use_dora"):
            raise ValueError("a DoRA adapter (use_dora); only plain LoRA is supported")
        return _PeftScaling(path, int(cfg["r"]), float(cfg["lora_alpha"]), bool(cfg.get("use_rslora", False)),
                            dict(cfg.get("rank_pattern") or {}), dict(cfg.get("alpha_pattern") or {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RVCLoraError(f"{path}: not a usable peft LoRA config ({exc})") from None


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read and validate an adapter file; raises ``RVCLoraError`` naming the file and the problem."""
    path = Path(path)
    if path.is_dir() and (path / PEFT_WEIGHTS).is_file():
        path = path / PEFT_WEIGHTS
    if not path.is_file():
        raise RVCLoraError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata()
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for bad headers / truncation
        raise RVCLoraError(f"{path}: not a valid safetensors adapter file ({e})") from e
    meta = _decode_meta(raw_meta)

    def fail(problem: str) -> RVCLoraError:
        return RVCLoraError(f"{path}: {problem}")

    parts: dict[str, dict[str, torch.Tensor]] = {}
    peft_adapters: dict[str, set[str]] = {}
    for key, t in raw.items():
        split = _split_key(key)
        if split is None:
            raise fail(f"unknown tensor key '{key}' (expected .lora_down.weight, .lora_up.weight, "
                       ".alpha, .diff, .diff_b, LyCORIS .hada_*/.lokr_*/.dora_scale or peft .lora_A/.lora_B)")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise fail(f"tensor '{key}' holds NaN or infinite values; the adapter is damaged (export it again, "
                       "e.g. by re-running its training, which resumes from the last checkpoint)")
        module, part, adapter = split
        if adapter is not None:
            peft_adapters.setdefault(module, set()).add(adapter)
        if part in parts.get(module, {}):
            raise fail(f"module '{module}' has its {part} tensor twice")
        parts.setdefault(module, {})[part] = t
    for module, names in peft_adapters.items():
        if len(names) > 1:
            raise fail(f"module '{module}' holds several peft adapters {sorted(names)}; keep one per file")

    default_alpha = _metadata_alpha(meta)
    peft = _read_peft_config(path) if peft_adapters else None
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, str] = {}
    for module, p in parts.items():
        has_lora = "lora_down" in p or "lora_up" in p
        if "diff" in p:
            if has_lora or "alpha" in p:
                raise fail(f"module '{module}' mixes a full diff with low-rank factors")
            _check_family(ALGORITHMS["full"], module, p, fail)
            modules[module] = "diff"
            tensors[f"{module}.diff"] = p["diff"]
        elif has_lora:
            if "lora_down" not in p or "lora_up" not in p:
                missing = "lora_up" if "lora_down" in p else "lora_down"
                raise fail(f"module '{module}' is missing its {missing} tensor")
            down, up = p["lora_down"], p["lora_up"]
            _check_pair(module, down, up, fail)
            rank = int(down.shape[0])
            if "alpha" in p:
                if p["alpha"].numel() != 1:
                    raise fail(f"module '{module}' alpha must be a single number, has shape "
                               f"{tuple(p['alpha'].shape)}")
                alpha = float(p["alpha"].reshape(()))
            elif module in peft_adapters and peft is not None:
                alpha = peft.kohya_alpha(module, rank, fail)
            elif default_alpha is not None:
                alpha = default_alpha
            elif module in peft_adapters:
                raise fail(f"peft adapter without its {PEFT_CONFIG}: the scale (lora_alpha / r) of module "
                           f"'{module}' cannot be known; keep the {PEFT_CONFIG} that peft saved beside the file")
            else:
                alpha = float(rank)  # kohya's rule for files without alpha
            modules[module] = "lora"
            tensors[f"{module}.lora_down.weight"] = down
            tensors[f"{module}.lora_up.weight"] = up
            tensors[f"{module}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
            if not math.isfinite(alpha):  # values are checked too, not only keys and shapes
                raise fail(f"module '{module}' alpha is {alpha}, not a finite number")
            if "dora_scale" in p:
                modules[module] = "dora"
                tensors[f"{module}.dora_scale"] = p["dora_scale"]
            _check_family(ALGORITHMS[modules[module]], module, p, fail)
        elif (family := algorithm_of(p)) is not None:  # LyCORIS LoHa / LoKr
            _check_family(family, module, p, fail)
            modules[module] = family.algorithm
            tensors.update({part_key(module, part): t for part, t in p.items() if part != "diff_b"})
        else:
            raise fail(f"module '{module}' has {sorted(p)} but neither a diff nor a lora_down/lora_up pair")
        if "diff_b" in p:
            if p["diff_b"].dim() != 1:
                raise fail(f"module '{module}' diff_b must be 1-D, has shape {tuple(p['diff_b'].shape)}")
            tensors[f"{module}.diff_b"] = p["diff_b"]
    if not modules:
        raise fail("holds no adapter tensors")
    return AdapterFile(path=path, tensors=tensors, metadata=meta, modules=modules)


def _check_family(family, module: str, parts: dict[str, torch.Tensor], fail) -> None:
    """The algorithm's own consistency checks (no mixed families, agreeing ranks) as a file error."""
    try:
        family.check_parts(module, parts)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _split_key(key: str) -> tuple[str, str, str | None] | None:
    """``(module, part, peft adapter name or None)`` for a tensor key, or None if unknown."""
    ours = split_key(key)
    if ours is not None:
        return ours[0], ours[1], None
    m = _PEFT.match(key)
    if m is None:
        return None
    part = "lora_down" if m["ab"] == "A" else "lora_up"
    return m["module"].removeprefix(_PEFT_PREFIX), part, m["adapter"] or ""


def _check_pair(module: str, down: torch.Tensor, up: torch.Tensor, fail) -> None:
    """Rank agreement: down ``[r, ...]``; up ``[O, r(, 1)]`` (Conv1d/Linear) or ``[r, O, K]`` (transposed)."""
    if down.dim() not in (2, 3) or up.dim() not in (2, 3):
        raise fail(f"module '{module}' factors must be 2-D or 3-D, got down {tuple(down.shape)}, "
                   f"up {tuple(up.shape)}")
    r = down.shape[0]
    ok = up.shape[1] == r or (up.dim() == 3 and up.shape[0] == r)
    if not ok:
        raise fail(f"module '{module}' rank mismatch: lora_down {tuple(down.shape)} has rank {r} but "
                   f"lora_up is {tuple(up.shape)}")


def fingerprint_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """First 16 hex chars of sha256 over sorted names, shapes and fp16 bytes of each tensor.

    Floating tensors are hashed as fp16, so an fp16 file and the fp32 tensors it was written from agree.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float16)
        h.update(name.encode("utf-8") + b"\0")
        h.update(str(tuple(t.shape)).encode("ascii") + b"\0")
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_fingerprint(expected: str | None, actual: str, adapter_path: str | os.PathLike, base_desc: str,
                      force: bool = False) -> bool:
    """Compare a stored base fingerprint with the current base's.

    Returns True if they match (or the adapter stores none), False on a mismatch when ``force`` is set;
    otherwise raises ``RVCLoraError`` naming the adapter, the base and both fingerprints.
    """
    if not expected or expected == actual:
        return True
    if force:
        return False
    raise RVCLoraError(
        f"adapter {adapter_path} was made for a base with fingerprint {expected}, but {base_desc} has "
        f"fingerprint {actual}; use a matching base model (or apply it anyway: --force on the command line, "
        "force=True in Python)"
    )
