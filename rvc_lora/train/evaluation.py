"""Validation on held-out pieces: mel loss of the reconstruction, and clips for TensorBoard.

Runs under a forked, fixed-seed RNG so validation is repeatable and never disturbs training's
random stream (a resumed run and an uninterrupted run stay identical).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from rvc_lora.models import MelSettings, mel_spectrogram, spec_to_mel

if TYPE_CHECKING:
    from .speaker_similarity import SpeakerSimilarity

__all__ = ["ValidationClip", "ValidationResult", "validate"]


@dataclass
class ValidationClip:
    """One held-out piece: waves ``[T]`` and log-mels ``[n_mels, frames]``."""

    real: torch.Tensor
    reconstruction: torch.Tensor
    conversion: torch.Tensor
    mel_real: torch.Tensor
    mel_reconstruction: torch.Tensor


@dataclass
class ValidationResult:
    """``speaker_similarity``: mean cosine of every piece's conversion to the real pieces (None if not asked)."""

    mel_l1: float
    clips: list[ValidationClip] = field(default_factory=list)
    speaker_similarity: float | None = None


def _to(item: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.unsqueeze(0).to(device) for k, v in item.items()}


def _convert(synth: torch.nn.Module, item: dict[str, torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
    """The piece re-synthesised from its content features and pitch (``Synthesizer.infer``): [T] on the CPU."""
    converted, _, _ = synth.infer(item["phone"], lengths, item.get("pitch"), item.get("pitchf"), item["sid"])
    return converted[0, 0].float().cpu()


@torch.no_grad()
def validate(synth: torch.nn.Module, items: list[dict[str, torch.Tensor]], settings: MelSettings,
             device: torch.device, n_clips: int, seed: int = 0,
             similarity: SpeakerSimilarity | None = None) -> ValidationResult:
    """Mean mel L1 (unweighted) between each piece and its reconstruction through the posterior
    encoder and generator; the first ``n_clips`` pieces also get a conversion from their content
    features and pitch (``Synthesizer.infer``). With ``similarity``, every piece is converted and the
    conversions are scored against the real pieces. ``items`` are ``PieceDataset`` items (unbatched)."""
    was_training = synth.training
    synth.eval()
    devices = [device] if device.type == "cuda" else []
    losses: list[float] = []
    clips: list[ValidationClip] = []
    conversions: list[torch.Tensor] = []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for i, raw in enumerate(items):
                item = _to(raw, device)
                frames = item["spec"].shape[-1]
                lengths = torch.tensor([frames], device=device)
                g = synth.emb_g(item["sid"]).unsqueeze(-1)
                _, m_q, _, mask = synth.enc_q(item["spec"], lengths, g=g)
                if synth.f0:
                    recon = synth.dec(m_q * mask, item["pitchf"], g=g)
                else:
                    recon = synth.dec(m_q * mask, g=g)
                mel_real = spec_to_mel(item["spec"], settings.sample_rate, settings.n_fft, settings.n_mels,
                                       settings.fmin, settings.fmax)
                mel_recon = mel_spectrogram(recon.float().squeeze(1), settings)[..., :frames]
                losses.append(float(torch.nn.functional.l1_loss(mel_recon, mel_real[..., : mel_recon.shape[-1]])))
                if i < n_clips:
                    conversions.append(_convert(synth, item, lengths))
                    clips.append(ValidationClip(item["wave"][0].cpu(), recon[0, 0].float().cpu(),
                                                conversions[-1], mel_real[0].cpu(),
                                                mel_recon[0].cpu()))
            if similarity is not None:  # after the losses, so they do not depend on this setting
                for raw in items[len(conversions):]:
                    item = _to(raw, device)
                    conversions.append(_convert(synth, item, torch.tensor([item["spec"].shape[-1]], device=device)))
    finally:
        synth.train(was_training)
    score = None
    if similarity is not None and items:
        score = similarity.score([c.numpy() for c in conversions], [it["wave"].reshape(-1).numpy() for it in items],
                                 settings.sample_rate)
    return ValidationResult(sum(losses) / max(1, len(losses)), clips, score)
