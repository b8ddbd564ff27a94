"""Adapter hyper-parameters: algorithm, rank, alpha, dropout and which modules to adapt (glob patterns)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .algorithms import ALGORITHMS


@dataclass
class LoRAConfig:
    """Settings shared by every adapter created in one ``inject_lora`` call.

    ``algorithm`` is one of ``lora``, ``loha``, ``lokr``, ``dora``, ``full`` (see ``rvc_lora.lora.algorithms``).
    ``targets`` are ``fnmatch`` globs matched against qualified module names (``"ups.*"``,
    ``"resblocks.*"``); ``*`` also matches dots. ``alpha=None`` means ``alpha = rank`` (scale 1).
    ``factor`` and ``decompose_both`` shape LoKr's Kronecker factors; other algorithms ignore them.
    """

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default_factory=tuple)
    rs_lora: bool = False
    algorithm: str = "lora"
    factor: int = -1
    decompose_both: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(str(t) for t in self.targets)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is None:
            self.alpha = float(self.rank)
        self.alpha = float(self.alpha)
        if not math.isfinite(self.alpha):
            raise ValueError(f"LoRA alpha must be a finite number, got {self.alpha!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown adapter algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        self.dropout = float(self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.dropout and not ALGORITHMS[self.algorithm].has_dropout:
            raise ValueError(f"dropout applies to lora and dora only; set it to 0 for {self.algorithm}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor == 0 or self.factor < -1:
            raise ValueError(f"LoKr factor must be -1 (automatic) or a positive integer, got {self.factor!r}")
        if any(not t for t in self.targets):
            raise ValueError(f"LoRA target patterns must be non-empty strings, got {self.targets!r}")

    @property
    def scale(self) -> float:
        """Multiplier of the weight delta: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA."""
        return lora_scale(self.rank, self.alpha, self.rs_lora)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (targets as a list)."""
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoRAConfig:
        """Build from a dict (e.g. a Hydra/OmegaConf node); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoRA config keys {unknown}; expected some of {sorted(known)}")
        kwargs = dict(data)
        if "targets" in kwargs and kwargs["targets"] is not None:
            t = kwargs["targets"]
            kwargs["targets"] = (t,) if isinstance(t, str) else tuple(t)
        return cls(**kwargs)


def lora_scale(rank: int, alpha: float | None, rs_lora: bool = False) -> float:
    """``alpha / rank`` (or ``alpha / sqrt(rank)``); ``alpha=None`` means ``alpha = rank``."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    a = float(rank) if alpha is None else float(alpha)
    return a / math.sqrt(rank) if rs_lora else a / rank
