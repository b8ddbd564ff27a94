"""Channels-last (NWC) execution of 1-D convolutions, the layout oneDNN's CPU kernels run fastest.

A 1-D activation ``[B, C, T]`` is carried as a 4-D tensor ``[B, C, 1, T]`` in channels-last memory
(physically ``[B, T, C]``), and a ``Conv1d`` / ``ConvTranspose1d`` runs as the equivalent 2-D
convolution with a ``(1, K)`` kernel. The values are the same convolution (float32 rounding apart);
on an AVX2 CPU oneDNN then picks its direct (brgemm) kernels instead of im2col + GEMM (measured on
the v2 40k decoder's convolutions: 0.76x the time on 2 threads, 0.85x on 1).

The rank of a tensor says its layout: 3-D is the usual ``[B, C, T]``, 4-D is NWC. :func:`apply_conv`
dispatches on it, so one forward serves both layouts. A wrapper around a convolution (an adapter layer)
takes part by offering ``layout_free_weights() -> (conv, weight, bias) | None``: the convolution whose
settings to use and the weights to use with them (merged or rebuilt adapters), or None when it must run
as a module. Modules it cannot run as 2-D convolutions (weight norm hooks, wrappers that decline, other
padding modes) are called in their own ``[B, C, T]`` form and the result converted back: correct, only
without the speed-up. Convolutions run as 2-D are not called as modules, so forward hooks registered on
them do not fire in this layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["apply_conv", "from_nwc", "restride_conv_weights", "to_nwc"]


def to_nwc(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T]`` -> ``[B, C, 1, T]`` in channels-last memory (a copy unless already so)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def from_nwc(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, 1, T]`` (any memory format) -> contiguous ``[B, C, T]``."""
    return x.squeeze(2).contiguous()


def _runs_as_2d(conv: nn.Module) -> bool:
    """A plain (weight norm folded, unwrapped) zero-padded Conv1d / ConvTranspose1d."""
    return (type(conv) in (nn.Conv1d, nn.ConvTranspose1d) and "weight" in conv._parameters
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _as_2d(module: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None] | None:
    """(convolution, weight, bias) to run ``module`` as a 2-D convolution, or None when it cannot be."""
    if _runs_as_2d(module):
        return module, module.weight, module.bias
    offer = getattr(module, "layout_free_weights", None)
    found = offer() if offer is not None else None
    return found if found is not None and _runs_as_2d(found[0]) else None


def apply_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for ``x`` ``[B, C, T]`` (plain call) or NWC ``[B, C, 1, T]`` (2-D convolution, NWC out)."""
    if x.dim() == 3:
        return conv(x)
    found = _as_2d(conv)
    if found is None:
        return to_nwc(conv(from_nwc(x)))
    conv, weight, bias = found
    weight = weight.unsqueeze(2)
    if isinstance(conv, nn.ConvTranspose1d):
        return F.conv_transpose2d(x, weight, bias, (1, conv.stride[0]), (0, conv.padding[0]),
                                  (0, conv.output_padding[0]), conv.groups, (1, conv.dilation[0]))
    return F.conv2d(x, weight, bias, (1, conv.stride[0]), (0, conv.padding[0]), (1, conv.dilation[0]),
                    conv.groups)


@torch.no_grad()
def restride_conv_weights(root: nn.Module) -> int:
    """Store every plain Conv1d / ConvTranspose1d weight under ``root`` in channels-last memory, in place.

    Shapes and values are unchanged (``[O, I, K]`` stays ``[O, I, K]``, its memory becomes ``[O, K, I]``),
    so the 4-D view :func:`apply_conv` passes to oneDNN needs no copy, and code that writes the weights in
    place (adapter merging) keeps the layout. Returns the number of weights restrided.
    """
    count = 0
    for module in root.modules():
        if _runs_as_2d(module):
            weight = module.weight
            weight.data = weight.data.permute(0, 2, 1).contiguous().permute(0, 2, 1)
            count += 1
    return count
