"""One optimisation step of RVC's GAN recipe, as a function: models, batches, optimisers, scaler, settings
-> losses and gradient norms.

RVC's order (``infer/modules/train/train.py``): generator forward on a random ``segment_frames`` window
-> discriminator step on (real, fake.detach()) -> generator losses through the UPDATED discriminator
(mel L1 x c_mel, KL x c_kl, feature matching, LSGAN) -> generator step. Gradient norms are measured
after unscaling and before the optimiser step (RVC only measures them; ``grad_clip`` clips as well).

Several micro-batches (gradient accumulation) are one step: losses are scaled by 1/n, the discriminator
steps right before the last micro-batch's generator losses, so the earlier micro-batches see the
discriminator of the previous step. A non-finite loss (on any rank) skips the whole step: gradients are
cleared and :func:`train_step` returns None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rvc_lora import distributed as dist_utils
from rvc_lora.models import MelSettings, mel_spectrogram, spec_to_mel
from rvc_lora.models.synthesizer import slice_segments

from .losses import discriminator_losses, feature_matching_loss, generator_adversarial_loss, kl_loss, mel_l1

__all__ = ["StepModels", "StepOutput", "StepSettings", "StepTensors", "grad_norm", "train_step"]


@dataclass(frozen=True)
class StepSettings:
    """What a step needs besides models and optimisers.

    ``autocast_dtype``: None = float32; ``torch.float16`` / ``torch.bfloat16`` run the forward passes
    under autocast (losses and mels stay float32). ``grad_clip``: None = RVC (norm measured, not clipped).
    """

    mel: MelSettings
    segment_frames: int
    c_mel: float = 45.0
    c_kl: float = 1.0
    autocast_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: dist_utils.DistInfo = field(default_factory=dist_utils.DistInfo)


@dataclass
class StepModels:
    """The networks of a step.

    ``generator`` is called for the forward pass (the synthesizer, or its DDP wrapper); ``g_params`` are
    the parameters ``optim_g`` trains. ``discriminator`` is the plain discriminator (None for mel-only
    training); ``d_forward`` is what the discriminator's own step calls (its DDP wrapper; default the
    discriminator itself).
    """

    generator: nn.Module
    g_params: list[nn.Parameter]
    discriminator: nn.Module | None = None
    d_forward: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.d_forward is None:
            self.d_forward = self.discriminator


@dataclass
class StepTensors:
    """Detached tensors of the last micro-batch: ids_slice ``[B]`` (start frames), wave_hat and wave_real
    ``[B, 1, segment_samples]``, mel_real and mel_fake ``[B, n_mels, segment_frames]``."""

    ids_slice: torch.Tensor
    wave_hat: torch.Tensor
    wave_real: torch.Tensor
    mel_real: torch.Tensor
    mel_fake: torch.Tensor


@dataclass
class StepOutput:
    """Scalars (averaged over micro-batches; TensorBoard tags ``loss/g/{total,mel,kl,fm,adv}``,
    ``loss/d/total``, ``grad_norm/adapter``, ``grad_norm/d``), the discriminator loss terms per
    sub-discriminator (``d_real[i]`` = mean((1 - D_i(real))^2), ``d_fake[i]`` = mean(D_i(fake)^2), empty
    when D did not step), and the last micro-batch's tensors."""

    scalars: dict[str, float]
    d_real: list[float]
    d_fake: list[float]
    tensors: StepTensors


def grad_norm(params: Sequence[nn.Parameter], clip: float | None = None) -> float:
    """Total 2-norm of the gradients of ``params`` (those without a gradient are left out); with
    ``clip`` the gradients are also scaled down to that norm (the norm before clipping is returned)."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    if clip:
        return float(torch.nn.utils.clip_grad_norm_(with_grad, float(clip)))
    norms = torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in with_grad])
    return float(torch.linalg.vector_norm(norms))


def _autocast(settings: StepSettings):
    if settings.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(settings.device.type, dtype=settings.autocast_dtype)


def _finite(loss: torch.Tensor, settings: StepSettings) -> bool:
    return dist_utils.all_finite(bool(torch.isfinite(loss).item()), settings.dist, settings.device)


def train_step(models: StepModels, batches: Sequence[dict[str, torch.Tensor]], optim_g: torch.optim.Optimizer,
               optim_d: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler, settings: StepSettings,
               update_d: bool) -> StepOutput | None:
    """One optimiser step on one or more micro-batches (from ``collate_pieces``).

    ``update_d``: whether the discriminator steps now (needs ``optim_d``); otherwise a present
    discriminator still gives the adversarial and feature-matching losses (frozen / every_k modes).
    Returns the step's :class:`StepOutput`, or None when a loss was non-finite (step skipped, gradients
    cleared; the scaler is updated if the discriminator had already stepped).
    """
    if update_d and (optim_d is None or models.discriminator is None):
        raise ValueError("update_d needs a discriminator and its optimiser")
    n = len(batches)
    optim_g.zero_grad(set_to_none=True)
    if update_d:
        optim_d.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    d_real: list[float] = []
    d_fake: list[float] = []
    tensors = None
    for i, batch in enumerate(batches):
        step_d_now = update_d and i == n - 1
        result = _micro_batch(models, batch, optim_d, scaler, settings, update_d, step_d_now, n)
        if result.scalars is None:
            if result.d_stepped:
                scaler.update()
            optim_g.zero_grad(set_to_none=True)
            if optim_d is not None:
                optim_d.zero_grad(set_to_none=True)
            return None
        for key, value in result.scalars.items():  # losses are averaged; a gradient norm is measured once
            sums[key] = value if key.startswith("grad_norm/") else sums.get(key, 0.0) + value / n
        d_real, d_fake = _add_mean(d_real, result.d_real, n), _add_mean(d_fake, result.d_fake, n)
        tensors = result.tensors
    scaler.unscale_(optim_g)
    sums["grad_norm/adapter"] = grad_norm(models.g_params, settings.grad_clip)
    scaler.step(optim_g)
    scaler.update()
    return StepOutput(sums, d_real, d_fake, tensors)


def _add_mean(total: list[float], values: list[float], n: int) -> list[float]:
    """``total + values / n`` elementwise (an empty ``total`` counts as zeros)."""
    return [t + v / n for t, v in zip(total or [0.0] * len(values), values, strict=True)]


@dataclass
class _MicroResult:
    scalars: dict[str, float] | None  # None: a loss was non-finite
    d_stepped: bool
    d_real: list[float] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)
    tensors: StepTensors | None = None


def _micro_batch(models: StepModels, batch: dict[str, torch.Tensor], optim_d: torch.optim.Optimizer | None,
                 scaler: torch.amp.GradScaler, settings: StepSettings, update_d: bool, step_d_now: bool,
                 n: int) -> _MicroResult:
    """Forward one micro-batch, add its gradients (losses scaled by 1/n) and step D if asked."""
    b = {k: v.to(settings.device, non_blocking=True) for k, v in batch.items()}
    s = settings.mel
    with _autocast(settings):
        wave_hat, ids, _, z_mask, (_, z_p, m_p, logs_p, _, logs_q) = models.generator(
            b["phone"], b["phone_lengths"], b.get("pitch"), b.get("pitchf"), b["spec"], b["spec_lengths"], b["sid"])
    real = slice_segments(b["wave"], ids * s.hop, settings.segment_frames * s.hop)
    mel = spec_to_mel(b["spec"].float(), s.sample_rate, s.n_fft, s.n_mels, s.fmin, s.fmax)
    mel_real = slice_segments(mel, ids, settings.segment_frames)
    mel_fake = mel_spectrogram(wave_hat.float().squeeze(1), s)
    out: dict[str, float] = {}
    d_real: list[float] = []
    d_fake: list[float] = []

    if update_d:
        with _autocast(settings):
            real_outs, fake_outs, _, _ = models.d_forward(real, wave_hat.detach())
        real_terms, fake_terms = discriminator_losses(real_outs, fake_outs)
        loss_d = torch.stack(real_terms).sum() + torch.stack(fake_terms).sum()
        if not _finite(loss_d, settings):
            return _MicroResult(None, False)
        scaler.scale(loss_d / n).backward()
        out["loss/d/total"] = loss_d.item()
        d_real, d_fake = [t.item() for t in real_terms], [t.item() for t in fake_terms]
        if step_d_now:
            scaler.unscale_(optim_d)
            out["grad_norm/d"] = grad_norm(list(models.discriminator.parameters()), settings.grad_clip)
            scaler.step(optim_d)

    loss_mel = mel_l1(mel_real, mel_fake) * settings.c_mel
    loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * settings.c_kl
    total = loss_mel + loss_kl
    disc = models.discriminator
    if disc is not None:
        # The generator's losses go through the (updated) discriminator without giving it gradients.
        trainable = [p for p in disc.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with _autocast(settings):
                _, fake_outs, real_fmaps, fake_fmaps = disc(real, wave_hat)
        finally:
            for p in trainable:
                p.requires_grad_(True)
        loss_fm = feature_matching_loss(real_fmaps, fake_fmaps)
        loss_adv = generator_adversarial_loss(fake_outs)
        total = total + loss_fm + loss_adv
        out["loss/g/fm"], out["loss/g/adv"] = loss_fm.item(), loss_adv.item()
    if not _finite(total, settings):
        return _MicroResult(None, step_d_now)
    scaler.scale(total / n).backward()
    out.update({"loss/g/total": total.item(), "loss/g/mel": loss_mel.item(), "loss/g/kl": loss_kl.item()})
    tensors = StepTensors(ids.detach(), wave_hat.detach(), real.detach(), mel_real.detach(), mel_fake.detach())
    return _MicroResult(out, step_d_now, d_real, d_fake, tensors)
