"""Build what a run trains: base synthesizer (+ adapters), discriminator, optimisers, precision.

Everything here runs before the first step, so every configuration problem surfaces early.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from rvc_lora.checkpoint import load_rvc
from rvc_lora.data.experiment import ExperimentInfo
from rvc_lora.generator_lora import SynthesizerLoRA
from rvc_lora.models import MultiPeriodDiscriminator, Synthesizer, build_discriminator, mel_settings
from rvc_lora.utils import RVCLoraError

from .trainable import SpeakerRowDelta
from .validate import check_base_against_experiment, lora_config

__all__ = ["Models", "Precision", "adamw_settings", "build_models", "resolve_precision"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """Autocast settings: ``dtype`` None means float32 (autocast off); ``scaler`` for fp16."""

    name: str
    dtype: torch.dtype | None
    scaler: bool


def resolve_precision(name: str, device: torch.device) -> Precision:
    """auto = fp16 with a GradScaler on CUDA, fp32 elsewhere."""
    if name == "auto":
        name = "fp16" if device.type == "cuda" else "fp32"
    if name == "fp16":
        return Precision("fp16", torch.float16, True)
    if name == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    return Precision("fp32", None, False)


def adamw_settings(optim: DictConfig) -> dict:
    """Keyword arguments of ``torch.optim.AdamW`` from the ``optim`` config group (RVC's: lr 1e-4, betas
    (0.8, 0.99), eps 1e-9, weight decay 0.01)."""
    return {"lr": float(optim.lr), "betas": tuple(float(b) for b in optim.betas), "eps": float(optim.eps),
            "weight_decay": float(optim.weight_decay)}


@dataclass
class Models:
    synth: Synthesizer
    adapters: SynthesizerLoRA | None  # None for adapter=none (full fine-tune)
    speaker_delta: SpeakerRowDelta | None
    discriminator: MultiPeriodDiscriminator | None  # None for mel_only
    trainable_g: list[nn.Parameter]
    warnings: list[str]


def build_models(cfg: DictConfig, info: ExperimentInfo, device: torch.device) -> Models:
    """Load the base G (and D), freeze it and attach trainable adapters as ``cfg`` asks."""
    warnings: list[str] = []
    base = load_rvc(str(cfg.base.g))
    if base.kind != "generator":
        raise RVCLoraError(f"base.g {cfg.base.g} is a discriminator file; give the generator (e.g. f0G40k.pth)")
    synth = base.model
    if not hasattr(synth, "enc_q"):
        raise RVCLoraError(f"base.g {cfg.base.g} is an inference model without the posterior encoder "
                           "(enc_q); training needs a pretrained base such as f0G40k.pth")
    speaker_id = int(cfg.data.speaker_id)
    check_base_against_experiment(cfg.base.g, base.version, base.sample_rate, base.f0, base.n_speakers, info,
                                  speaker_id)
    # config[1] in RVC files is a placeholder; the training window comes from the mel settings.
    synth.segment_frames = mel_settings(base.version, base.sample_rate).segment_frames
    if cfg.trainer.segment_frames:
        synth.segment_frames = cfg.trainer.segment_frames
    synth.dec.gradient_checkpointing = bool(cfg.trainer.gradient_checkpointing)

    adapters = None
    speaker_delta = None
    if cfg.adapter == "lora":
        lora = cfg.lora
        config = lora_config(cfg)
        adapters = SynthesizerLoRA(synth, config, flow=lora.flow, enc_p=lora.enc_p, base_desc=str(cfg.base.g))
        for p in synth.parameters():
            p.requires_grad_(False)
        trainable = adapters.lora_parameters()
        for p in trainable:
            p.requires_grad_(True)
        if lora.train_speaker_embedding:
            speaker_delta = SpeakerRowDelta(synth.emb_g, speaker_id)
            synth.emb_g = speaker_delta
            trainable = trainable + [speaker_delta.delta]
    else:
        for p in synth.parameters():
            p.requires_grad_(True)
        trainable = list(synth.parameters())
    synth.to(device).train()

    disc = None
    mode = cfg.trainer.discriminator
    if mode != "mel_only":
        if cfg.base.d is not None:
            loaded = load_rvc(str(cfg.base.d))
            if loaded.kind != "discriminator":
                raise RVCLoraError(f"base.d {cfg.base.d} is a generator file; give the discriminator "
                                   "(e.g. f0D40k.pth)")
            if loaded.version != base.version:
                raise RVCLoraError(f"base.d {cfg.base.d} is an RVC {loaded.version} discriminator but base.g is "
                                   f"{base.version}")
            disc = loaded.model
        else:
            message = ("base.d is not set: training starts from a freshly initialised discriminator, which "
                       "makes the first steps noisy; pass the pretrained D (e.g. f0D40k.pth) for best results")
            if mode == "frozen":
                message += " (and trainer.discriminator=frozen keeps that random discriminator fixed)"
            log.warning(message)
            warnings.append(message)
            disc = build_discriminator(base.version, cfg.model.discriminator_divisor)
        disc.to(device).train()
        for p in disc.parameters():
            p.requires_grad_(mode != "frozen")
    return Models(synth, adapters, speaker_delta, disc, trainable, warnings)
