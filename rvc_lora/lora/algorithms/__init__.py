"""Adapter algorithms, one small module each on a shared base (``base.AdapterModule``).

``ALGORITHMS`` maps the names used in configs and file metadata (``lora``, ``loha``, ``lokr``, ``dora``,
``full``) to their classes; ``algorithm_of`` recognises an algorithm from the parts a file holds for a
module; ``split_key`` / ``part_key`` translate between adapter-file keys and ``(module path, part)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import AdaptedLayer, AdapterModule
from .dora import DoRA
from .full import FullDelta
from .loha import LoHa
from .lokr import LoKr, factorize
from .lora import LoRA

ALGORITHMS: dict[str, type[AdapterModule]] = {cls.algorithm: cls for cls in (LoRA, LoHa, LoKr, DoRA, FullDelta)}
_DETECTION_ORDER = (FullDelta, DoRA, LoHa, LoKr, LoRA)  # DoRA files also hold LoRA's parts

# Adapter-file key suffix of each part (kohya's ``.weight`` on LoRA factors, LyCORIS' bare names otherwise).
# Tucker cores are listed so that files using them are refused by name, not as unknown keys.
KEY_SUFFIXES: dict[str, str] = {".lora_down.weight": "lora_down", ".lora_up.weight": "lora_up"} | {
    f".{part}": part for part in (
        "alpha", "diff", "diff_b", "dora_scale", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1",
        "hada_t2", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
}
_PART_KEYS = {part: suffix for suffix, part in KEY_SUFFIXES.items()}


def algorithm_of(parts: Iterable[str]) -> type[AdapterModule] | None:
    """The algorithm whose marker parts are present (None if none is)."""
    names = set(parts)
    return next((cls for cls in _DETECTION_ORDER if cls.markers & names), None)


def split_key(key: str) -> tuple[str, str] | None:
    """``"dec.ups.0.lora_down.weight"`` -> ``("dec.ups.0", "lora_down")``; None for an unknown suffix."""
    for suffix, part in KEY_SUFFIXES.items():
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], part
    return None


def part_key(module: str, part: str) -> str:
    """The adapter-file key of ``part`` of ``module`` (inverse of ``split_key``)."""
    return module + _PART_KEYS[part]


__all__ = ["ALGORITHMS", "KEY_SUFFIXES", "AdaptedLayer", "AdapterModule", "DoRA", "FullDelta", "LoHa", "LoKr",
           "LoRA", "algorithm_of", "factorize", "part_key", "split_key"]
