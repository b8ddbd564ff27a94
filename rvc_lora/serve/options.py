"""Request options: the ``options`` JSON of ``POST /v1/convert`` and ``WS /v1/stream``, checked field by field.

Keys mirror ``rvc-lora convert``'s flags: ``pitch``, ``f0_method``, ``index_rate``, ``protect``, ``rms_mix``,
``speaker_id``, ``sample_rate``, ``seed``, ``format`` and ``adapters`` (``[{"name", "strength"}]``, names
from the registry). Every problem raises :class:`RequestError` naming the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from rvc_lora.infer.pipeline import ConvertOptions
from rvc_lora.merge import check_strength
from rvc_lora.serve.errors import RequestError
from rvc_lora.serve.registry import AdapterEntry, AdapterRegistry, BadAdapterName, UnknownAdapter
from rvc_lora.utils import RVCLoraError

MAX_ADAPTERS = 8
FORMATS = ("wav", "flac")
_NUMBERS = {  # name: (low, high)
    "pitch": (-48.0, 48.0),
    "index_rate": (0.0, 1.0),
    "protect": (0.0, 1.0),
    "rms_mix": (0.0, 1.0),
}


@dataclass(frozen=True)
class ModelInfo:
    """What requests are checked against: the served model and its options."""

    name: str
    version: str
    sample_rate: int
    f0: bool
    n_speakers: int
    has_index: bool
    f0_methods: tuple[str, ...]
    default_f0_method: str


@dataclass
class ConvertRequest:
    """A checked request: pipeline options, adapters with strengths, pitch method, output format."""

    options: ConvertOptions
    adapters: list[tuple[AdapterEntry, float]] = field(default_factory=list)
    f0_method: str = "fcpe"
    format: str = "wav"


def parse_options_json(text: str | None, field_name: str = "options") -> dict[str, Any]:
    """The options JSON text -> dict (empty text = no options)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RequestError(400, field_name, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RequestError(400, field_name, f"must be a JSON object, got {type(value).__name__}")
    return value


def _number(raw: dict[str, Any], key: str, default: float, prefix: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"{prefix}{key}", f"must be a number, got {json.dumps(value)}")
    value = float(value)
    low, high = _NUMBERS[key]
    if not math.isfinite(value) or not low <= value <= high:
        raise RequestError(422, f"{prefix}{key}", f"must be within {low:g}..{high:g}, got {value}")
    return value


def _integer(raw: dict[str, Any], key: str, default: int | None, prefix: str, low: int, high: int) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{prefix}{key}", f"must be an integer, got {json.dumps(value)}")
    if not low <= value <= high:
        raise RequestError(422, f"{prefix}{key}", f"must be within {low}..{high}, got {value}")
    return value


def parse_adapters(raw: Any, registry: AdapterRegistry, prefix: str = "") -> list[tuple[AdapterEntry, float]]:
    """``[{"name": ..., "strength": ...}]`` -> registry entries with checked strengths."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RequestError(400, f"{prefix}adapters", "must be a list of {\"name\": ..., \"strength\": ...} objects")
    if len(raw) > MAX_ADAPTERS:
        raise RequestError(422, f"{prefix}adapters", f"at most {MAX_ADAPTERS} adapters per request, got {len(raw)}")
    out: list[tuple[AdapterEntry, float]] = []
    for i, item in enumerate(raw):
        where = f"{prefix}adapters[{i}]"
        if not isinstance(item, dict):
            raise RequestError(400, where, "must be an object {\"name\": ..., \"strength\": ...}")
        unknown = sorted(set(item) - {"name", "strength"})
        if unknown:
            raise RequestError(400, f"{where}.{unknown[0]}", "unknown key (expected name, strength)")
        if "name" not in item:
            raise RequestError(400, f"{where}.name", "missing")
        try:
            entry = registry.get(item["name"])
        except BadAdapterName as exc:
            raise RequestError(422, f"{where}.name", str(exc)) from None
        except UnknownAdapter as exc:
            raise RequestError(422, f"{where}.name", f"{exc} (see GET /v1/adapters)") from None
        strength = item.get("strength", 1.0)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise RequestError(400, f"{where}.strength", f"must be a number, got {json.dumps(strength)}")
        try:
            value = check_strength(strength, entry.name)
        except RVCLoraError as exc:
            raise RequestError(422, f"{where}.strength", str(exc)) from None
        if any(e.name == entry.name for e, _ in out):
            raise RequestError(422, where, f"adapter {entry.name!r} is listed twice")
        out.append((entry, value))
    return out


def parse_convert_request(raw: dict[str, Any], registry: AdapterRegistry, model: ModelInfo,
                          prefix: str = "options.", allowed_extra: frozenset[str] = frozenset()) -> ConvertRequest:
    """Check an options object against the model and the registry; keys in ``allowed_extra`` are skipped."""
    known = {"pitch", "f0_method", "index_rate", "protect", "rms_mix", "speaker_id", "sample_rate", "seed",
             "format", "adapters"}
    unknown = sorted(set(raw) - known - allowed_extra)
    if unknown:
        raise RequestError(400, f"{prefix}{unknown[0]}", f"unknown option (known: {', '.join(sorted(known))})")
    f0_method = raw.get("f0_method", model.default_f0_method)
    if not isinstance(f0_method, str) or f0_method.lower() not in model.f0_methods:
        raise RequestError(422, f"{prefix}f0_method", f"must be one of {', '.join(model.f0_methods)}, "
                                                      f"got {json.dumps(f0_method)}")
    fmt = raw.get("format", "wav")
    if fmt not in FORMATS:
        raise RequestError(422, f"{prefix}format", f"must be one of {', '.join(FORMATS)}, got {json.dumps(fmt)}")
    options = ConvertOptions(
        pitch=_number(raw, "pitch", 0.0, prefix),
        index_rate=_number(raw, "index_rate", 0.75, prefix),
        protect=_number(raw, "protect", 0.33, prefix),
        rms_mix=_number(raw, "rms_mix", 0.25, prefix),
        speaker_id=int(_integer(raw, "speaker_id", 0, prefix, 0, model.n_speakers - 1) or 0),
        sample_rate=_integer(raw, "sample_rate", None, prefix, 8000, 384000),
        seed=_integer(raw, "seed", None, prefix, 0, 2**63 - 1),
    )
    return ConvertRequest(options, parse_adapters(raw.get("adapters"), registry, prefix), f0_method.lower(), fmt)
