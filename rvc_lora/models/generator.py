"""RVC's HiFi-GAN decoders ``dec``: plain :class:`Generator` (no-f0 models) and :class:`GeneratorNSF`.

Stage ``i`` (of ``len(upsample_rates)``): LeakyReLU(0.1) -> ``ups[i]`` (weight-normed transposed conv,
channels ``uic / 2**i -> uic / 2**(i+1)``) -> [NSF: + ``noise_convs[i]``(harmonic source)] -> mean of
the stage's resblocks (flat index ``i * num_kernels + j``). Then LeakyReLU with torch's default slope
0.01 (as in RVC), ``conv_post`` (no bias) and tanh. ``conv_pre``, ``cond``, ``noise_convs`` and
``conv_post`` are plain convolutions; ``ups`` and resblock convs are weight-normed (weight_g/weight_v).

Inference can run in another layout and precision without changing a weight's value
(:meth:`set_execution`): channels-last convolutions (:mod:`.layout`; the same numbers within float32
rounding, faster on CPUs) and leading stages under bf16 / fp16 autocast (faster where the hardware has
them, at a measured cost in accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layout import apply_conv, from_nwc, restride_conv_weights, to_nwc
from .modules import weight_norm
from .nsf import SourceModuleHnNSF

__all__ = ["Generator", "GeneratorNSF", "ResBlock1", "ResBlock2", "LRELU_SLOPE"]

LRELU_SLOPE = 0.1


def _init_conv(conv: nn.Module) -> nn.Module:
    """HiFi-GAN initialisation N(0, 0.01) of a convolution weight (before weight norm is applied)."""
    nn.init.normal_(conv.weight, 0.0, 0.01)
    return conv


def _dilated_conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    """Length-preserving dilated Conv1d(channels -> channels)."""
    padding = (kernel_size * dilation - dilation) // 2
    return nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=padding)


class ResBlock1(nn.Module):
    """Three residual pairs [LReLU -> dilated conv (``convs1``) -> LReLU -> conv (``convs2``)]; ``[B,C,T]``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(_init_conv(_dilated_conv(channels, kernel_size, d))) for d in dilation
        )
        self.convs2 = nn.ModuleList(
            weight_norm(_init_conv(_dilated_conv(channels, kernel_size, 1))) for _ in dilation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T] -> [B, C, T]`` (or NWC ``[B, C, 1, T]``, see :mod:`.layout`)."""
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = apply_conv(c2, F.leaky_relu(apply_conv(c1, F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            x = xt + x
        return x


class ResBlock2(nn.Module):
    """Two residual units [LReLU -> dilated conv] (``convs``, dilations ``dilation[:2]``); ``[B,C,T]``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            weight_norm(_init_conv(_dilated_conv(channels, kernel_size, d))) for d in list(dilation)[:2]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T] -> [B, C, T]`` (or NWC ``[B, C, 1, T]``, see :mod:`.layout`)."""
        for conv in self.convs:
            x = apply_conv(conv, F.leaky_relu(x, LRELU_SLOPE)) + x
        return x


def _resblock_class(resblock: str) -> type[nn.Module]:
    if str(resblock) == "1":
        return ResBlock1
    if str(resblock) == "2":
        return ResBlock2
    raise ValueError(f"resblock must be '1' or '2', got {resblock!r}")


class _HiFiGANBase(nn.Module):
    """Shared construction helpers and the per-stage resblock average (optionally checkpointed)."""

    num_kernels: int
    num_upsamples: int
    resblocks: nn.ModuleList
    gradient_checkpointing: bool
    #: activations in channels-last NWC form (see :meth:`set_execution`)
    channels_last: bool = False
    #: the first ``reduced_stages`` upsampling stages run under autocast to ``reduced_dtype``
    reduced_stages: int = 0
    reduced_dtype: torch.dtype = torch.bfloat16

    def set_execution(self, channels_last: bool = False, reduced_stages: int = 0,
                      reduced_dtype: torch.dtype = torch.bfloat16) -> None:
        """Choose how the forward runs; weight values are never changed.

        ``channels_last``: convolutions as channels-last 2-D convolutions (weights restrided in place once;
        equal to the default layout within float32 rounding). ``reduced_stages``: how many leading
        upsampling stages (upsampler + resblocks) run under ``torch.autocast`` to ``reduced_dtype``;
        ``conv_pre``, ``cond``, the harmonic source, ``noise_convs`` and ``conv_post`` stay in the model's
        dtype, and so does every stage from ``reduced_stages`` on.
        """
        if not 0 <= reduced_stages <= self.num_upsamples:
            raise ValueError(f"reduced_stages must be 0..{self.num_upsamples}, got {reduced_stages}")
        if channels_last:
            restride_conv_weights(self)
        self.channels_last = bool(channels_last)
        self.reduced_stages = int(reduced_stages)
        self.reduced_dtype = reduced_dtype

    def _stage_precision(self, stage: int, x: torch.Tensor) -> AbstractContextManager:
        """Autocast for a reduced stage; otherwise nothing (an outer autocast, as in training, stays in force)."""
        if stage < self.reduced_stages:
            return torch.autocast(x.device.type, dtype=self.reduced_dtype)
        return nullcontext()

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        return to_nwc(x) if self.channels_last else x

    def _run_stages(self, x: torch.Tensor, har_source: torch.Tensor | None = None,
                    noise_convs: nn.ModuleList | None = None) -> torch.Tensor:
        """Upsampling stages then ``conv_post``: x after conv_pre/cond -> audio ``[B, 1, T * upp]``."""
        dtype = x.dtype
        for i, up in enumerate(self.ups):
            with self._stage_precision(i, x):
                x = apply_conv(up, F.leaky_relu(x, LRELU_SLOPE))
            if noise_convs is not None:
                x = x + apply_conv(noise_convs[i], har_source)
            with self._stage_precision(i, x):
                x = self._resblock_stage(i, x)
        x = apply_conv(self.conv_post, F.leaky_relu(x.to(dtype)))
        return torch.tanh(from_nwc(x) if x.dim() == 4 else x)

    def _build_ups(
        self, upsample_rates: Sequence[int], upsample_kernel_sizes: Sequence[int], uic: int
    ) -> nn.ModuleList:
        ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            conv = nn.ConvTranspose1d(uic // 2**i, uic // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            ups.append(weight_norm(_init_conv(conv)))
        return ups

    def _build_resblocks(
        self, resblock: str, kernel_sizes: Sequence[int], dilations: Sequence[Sequence[int]], uic: int, n: int
    ) -> tuple[nn.ModuleList, int]:
        cls = _resblock_class(resblock)
        blocks = nn.ModuleList()
        ch = uic
        for i in range(n):
            ch = uic // 2 ** (i + 1)
            for k, d in zip(kernel_sizes, dilations, strict=True):
                blocks.append(cls(ch, k, d))
        return blocks, ch

    def _stage_mean(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        first = stage * self.num_kernels
        xs = self.resblocks[first](x)
        for j in range(1, self.num_kernels):
            xs = xs + self.resblocks[first + j](x)
        return xs / self.num_kernels

    def _resblock_stage(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._stage_mean, stage, x, use_reentrant=False)
        return self._stage_mean(stage, x)


class Generator(_HiFiGANBase):
    """HiFi-GAN decoder of no-f0 RVC models: z ``[B, inter, T]`` (+ g) -> audio ``[B, 1, T * prod(rates)]``.

    Set ``gradient_checkpointing = True`` to recompute each stage's resblocks in backward (training).
    """

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upp = math.prod(upsample_rates)
        self.gradient_checkpointing = False
        uic = upsample_initial_channel
        self.conv_pre = nn.Conv1d(initial_channel, uic, 7, 1, padding=3)
        self.ups = self._build_ups(upsample_rates, upsample_kernel_sizes, uic)
        self.resblocks, ch = self._build_resblocks(
            resblock, resblock_kernel_sizes, resblock_dilation_sizes, uic, self.num_upsamples
        )
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, uic, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, inter, T]``, g ``[B, gin, 1]`` or None -> audio ``[B, 1, T * upp]`` in [-1, 1]."""
        x = apply_conv(self.conv_pre, self._enter(x))
        if g is not None:
            x = x + apply_conv(self.cond, self._enter(g))
        return self._run_stages(x)


class GeneratorNSF(_HiFiGANBase):
    """NSF-HiFi-GAN decoder of f0 RVC models: z ``[B, inter, T]`` + f0 ``[B, T]`` (+ g) -> audio.

    The harmonic source ``m_source`` (``[B, T * upp, 1]``) is injected at every stage through
    ``noise_convs[i]`` (stride ``prod(upsample_rates[i+1:])``, kernel 1 at the last stage).
    Set ``gradient_checkpointing = True`` to recompute each stage's resblocks in backward (training).
    """

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        gin_channels: int,
        sr: int,
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upp = math.prod(upsample_rates)
        self.gradient_checkpointing = False
        uic = upsample_initial_channel
        self.m_source = SourceModuleHnNSF(sr, harmonic_num=0)
        self.noise_convs = nn.ModuleList()
        for i in range(self.num_upsamples):
            channels = uic // 2 ** (i + 1)
            if i + 1 < self.num_upsamples:
                stride = math.prod(upsample_rates[i + 1 :])
                conv = nn.Conv1d(1, channels, kernel_size=stride * 2, stride=stride, padding=stride // 2)
            else:
                conv = nn.Conv1d(1, channels, kernel_size=1)
            self.noise_convs.append(conv)
        self.conv_pre = nn.Conv1d(initial_channel, uic, 7, 1, padding=3)
        self.ups = self._build_ups(upsample_rates, upsample_kernel_sizes, uic)
        self.resblocks, ch = self._build_resblocks(
            resblock, resblock_kernel_sizes, resblock_dilation_sizes, uic, self.num_upsamples
        )
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, uic, 1)

    def source(self, f0: torch.Tensor, noise: torch.Tensor | None = None,
               start_phase: torch.Tensor | None = None) -> torch.Tensor:
        """Harmonic source for f0 ``[B, T]`` Hz -> ``[B, 1, T * upp]`` (channels-first for the convs)."""
        return self.m_source(f0, self.upp, noise=noise, start=start_phase).transpose(1, 2)

    def phase_advance(self, f0: torch.Tensor) -> torch.Tensor:
        """Turns (mod 1) the sine advances over frames f0 ``[B, T]`` Hz: the ``start_phase`` of the next frames."""
        return self.m_source.l_sin_gen.advance(f0, self.upp)

    def forward(
        self,
        x: torch.Tensor,
        f0: torch.Tensor,
        g: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        start_phase: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x ``[B, inter, T]``, f0 ``[B, T]`` Hz (0 = unvoiced), g ``[B, gin, 1]`` or None,
        noise ``[B, T * upp, 1]`` standard-normal draw to use instead of ``torch.randn``,
        start_phase ``[B]`` turns of the sine before the first sample (streaming; default 0)
        -> audio ``[B, 1, T * upp]`` in [-1, 1]."""
        har_source = self._enter(self.source(f0, noise, start_phase))
        x = apply_conv(self.conv_pre, self._enter(x))
        if g is not None:
            x = x + apply_conv(self.cond, self._enter(g))
        return self._run_stages(x, har_source, self.noise_convs)
