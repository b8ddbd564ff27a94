"""Weight normalisation: fold it into a plain weight, or split a plain weight back into (g, v).

Convention (as in ``torch.nn.utils.weight_norm`` with ``dim=0``): ``W = g * v / ||v||`` where the
norm runs over every dim except 0 (out-channels for Conv1d/Linear, in-channels for ConvTranspose1d).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def norm_except_dim(v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """L2 norm of ``v`` over every dim but ``dim``, keepdim (for ``dim=0``: ``[v.shape[0], 1, ...]``).

    Returned in ``v``'s dtype but computed in at least fp32, so fp16 weights cannot overflow the sum of squares.
    """
    if v.dim() == 1:
        return v.abs()
    acc = torch.promote_types(v.dtype, torch.float32)
    others = tuple(d for d in range(v.dim()) if d != dim % v.dim())
    return v.to(acc).norm(p=2, dim=others, keepdim=True).to(v.dtype)


def split_weight_norm(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a plain weight into ``(g, v)`` with ``v = W`` and ``g = ||W||`` over dims != 0.

    For a 3-D weight ``[D0, D1, K]`` returns ``g [D0, 1, 1]`` and ``v [D0, D1, K]`` (copies).
    """
    w = weight.detach()
    return norm_except_dim(w).clone(), w.clone()


def weight_norm_effective(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Effective weight ``g * v / ||v||`` (norm over dims != 0); same shape as ``v``."""
    return v * (g / norm_except_dim(v))


def _legacy_hook(module: nn.Module, name: str = "weight"):
    for key, hook in module._forward_pre_hooks.items():
        if type(hook).__name__ == "WeightNorm" and getattr(hook, "name", None) == name:
            return key, hook
    return None, None


def fold_weight_norm(module: nn.Module, name: str = "weight") -> bool:
    """Replace a weight-normed ``module.weight`` by a single plain Parameter equal to it.

    Handles both the legacy hook (``weight_g``/``weight_v``) and the parametrization style. The module's
    output is unchanged (same formula as torch's own forward). Returns False if there was no weight norm.
    """
    key, hook = _legacy_hook(module, name)
    if hook is not None:
        g = getattr(module, name + "_g")
        v = getattr(module, name + "_v")
        with torch.no_grad():
            w = torch._weight_norm(v, g, hook.dim)
        requires_grad = v.requires_grad
        del module._forward_pre_hooks[key]
        del module._parameters[name + "_g"]
        del module._parameters[name + "_v"]
        if name in module.__dict__:  # the hook stores the computed tensor as a plain attribute
            del module.__dict__[name]
        module.register_parameter(name, nn.Parameter(w.detach().clone(), requires_grad=requires_grad))
        return True
    if parametrize.is_parametrized(module, name):
        plist = module.parametrizations[name]
        kinds = [type(p).__name__ for p in plist]
        if "_WeightNorm" not in kinds:
            return False
        if any(k != "_WeightNorm" for k in kinds):
            raise ValueError(
                f"{type(module).__name__}.{name} has parametrizations {kinds} besides weight norm; "
                "refusing to fold them together"
            )
        requires_grad = plist.original1.requires_grad
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        getattr(module, name).requires_grad_(requires_grad)
        return True
    return False


def has_weight_norm(module: nn.Module, name: str = "weight") -> bool:
    """True if ``module.<name>`` is weight-normed in either style."""
    if _legacy_hook(module, name)[1] is not None:
        return True
    if parametrize.is_parametrized(module, name):
        return any(type(p).__name__ == "_WeightNorm" for p in module.parametrizations[name])
    return False


def fold_all_weight_norm(root: nn.Module) -> list[str]:
    """Fold weight norm in every submodule of ``root``; returns the qualified names folded."""
    folded = []
    for qname, module in list(root.named_modules()):
        if ".parametrizations" in f".{qname}":
            continue
        if has_weight_norm(module) and fold_weight_norm(module):
            folded.append(qname)
    return folded
