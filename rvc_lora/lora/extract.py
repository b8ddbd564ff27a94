"""Truncated-SVD extraction of a weight delta into LoRA factors in the layouts of ``algorithms/lora.py``.

Factors are returned for ``alpha = rank`` (scale 1): loading them as ``lora_down``/``lora_up`` parts
reproduces the rank-r approximation of the delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("conv1d", "conv_transpose1d", "linear")


@dataclass
class ExtractedLayer:
    """Result for one layer. ``down``/``up`` shapes: conv1d ``[r, I, K]``/``[O, r, 1]``;
    conv_transpose1d ``[r, I, 1]``/``[r, O, K]``; linear ``[r, I]``/``[O, r]``."""

    down: torch.Tensor
    up: torch.Tensor
    rank: int
    rel_error: float  # ||delta - up*down||_F / ||delta||_F (0 for a zero delta)
    bytes_lowrank: int
    bytes_diff: int
    use_diff: bool  # True when the factors would take at least as many bytes as the dense delta


def _as_matrix(delta: torch.Tensor, kind: str) -> torch.Tensor:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    want = 2 if kind == "linear" else 3
    if delta.dim() != want:
        raise ValueError(f"a {kind} delta must be {want}-D, got shape {tuple(delta.shape)}")
    return delta.reshape(delta.shape[0], -1)


def choose_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r whose top singular values keep >= ``energy`` of ``sum(s^2)`` (at least 1)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    e = singular_values.double() ** 2
    total = float(e.sum())
    if total == 0.0:
        return 1
    cum = torch.cumsum(e, 0) / total
    r = int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype) - 1e-12).item()) + 1
    return max(1, min(r, e.numel()))


def extract_lowrank(delta: torch.Tensor, kind: str, rank: int | None = None, energy: float | None = None,
                    bytes_per_value: int = 2) -> ExtractedLayer:
    """Best rank-r factors of ``delta`` (Eckart-Young), r given directly or chosen by ``energy``.

    ``delta`` has the base weight's shape: conv1d ``[O, I, K]``, conv_transpose1d ``[I, O, K]``,
    linear ``[O, I]``. Byte counts assume ``bytes_per_value`` per stored value (fp16 = 2).
    """
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank or energy")
    mat = _as_matrix(delta, kind).detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    if rank is None:
        r = choose_rank(s, energy)
    else:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        r = min(rank, s.numel())
    total = float((s**2).sum())
    rel = (float((s[r:] ** 2).sum()) / total) ** 0.5 if total > 0 else 0.0
    root = s[:r].sqrt()
    left = u[:, :r] * root  # [D0, r]
    right = root[:, None] * vh[:r]  # [r, rest]
    out_dtype = delta.dtype if delta.is_floating_point() else torch.float32
    if kind == "conv1d":
        o, i, k = delta.shape
        up, down = left.reshape(o, r, 1), right.reshape(r, i, k)
    elif kind == "conv_transpose1d":
        i, o, k = delta.shape
        down, up = left.T.reshape(r, i, 1), right.reshape(r, o, k)
    else:
        up, down = left, right
    down = down.to(out_dtype).contiguous()
    up = up.to(out_dtype).contiguous()
    bytes_lowrank = (down.numel() + up.numel()) * bytes_per_value + 4  # + fp32 alpha
    bytes_diff = delta.numel() * bytes_per_value
    return ExtractedLayer(down, up, r, rel, bytes_lowrank, bytes_diff, bytes_lowrank >= bytes_diff)


def extracted_tensors(name: str, layer: ExtractedLayer, delta: torch.Tensor,
                      bias_delta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Adapter-file tensors for one module: ``diff`` if ``layer.use_diff`` else factors with alpha = rank;
    ``diff_b`` added when a non-zero ``bias_delta`` is given."""
    if layer.use_diff:
        out = {f"{name}.diff": delta.detach().clone()}
    else:
        out = {f"{name}.lora_down.weight": layer.down, f"{name}.lora_up.weight": layer.up,
               f"{name}.alpha": torch.tensor(float(layer.rank), dtype=torch.float32)}
    if bias_delta is not None and bool(bias_delta.ne(0).any()):
        out[f"{name}.diff_b"] = bias_delta.detach().clone()
    return out
