"""RVC's GAN-TTS losses, computed in float32 whatever the autocast precision.

Discriminator outputs are lists with one tensor per sub-discriminator; feature maps are lists (per
sub-discriminator) of lists (per layer) of tensors.
"""

from __future__ import annotations

import torch

__all__ = ["discriminator_losses", "feature_matching_loss", "generator_adversarial_loss", "kl_loss", "mel_l1"]


def discriminator_losses(real_outs: list[torch.Tensor],
                         fake_outs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """LSGAN discriminator terms per sub-discriminator: (mean((1 - D(real))^2), mean(D(fake)^2)).

    The discriminator loss is the sum of both lists.
    """
    real_terms = [torch.mean((1.0 - real.float()) ** 2) for real in real_outs]
    fake_terms = [torch.mean(fake.float() ** 2) for fake in fake_outs]
    if len(real_terms) != len(fake_terms):
        raise ValueError(f"{len(real_terms)} real but {len(fake_terms)} fake discriminator outputs")
    return real_terms, fake_terms


def generator_adversarial_loss(fake_outs: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss: sum over sub-discriminators of mean((1 - D(fake))^2)."""
    total = torch.zeros((), device=fake_outs[0].device)
    for fake in fake_outs:
        total = total + torch.mean((1.0 - fake.float()) ** 2)
    return total


def feature_matching_loss(real_fmaps: list[list[torch.Tensor]], fake_fmaps: list[list[torch.Tensor]]) -> torch.Tensor:
    """2 * sum over sub-discriminators and layers of mean |fmap_real (detached) - fmap_fake|."""
    total = torch.zeros((), device=real_fmaps[0][0].device)
    for real_layers, fake_layers in zip(real_fmaps, fake_fmaps, strict=True):
        for real, fake in zip(real_layers, fake_layers, strict=True):
            total = total + torch.mean(torch.abs(real.detach().float() - fake.float()))
    return 2.0 * total


def kl_loss(
    z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL term of VITS between the flowed posterior sample and the prior.

    All of z_p, logs_q, m_p, logs_p are ``[B, C, T]``; mask ``[B, 1, T]``. Returns the masked sum over
    elements divided by the mask sum.
    """
    z_p, logs_q, m_p, logs_p, mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * mask) / torch.sum(mask)


def mel_l1(mel_real: torch.Tensor, mel_fake: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of two log-mel spectrograms ``[B, n_mels, frames]`` (fp32)."""
    return torch.nn.functional.l1_loss(mel_real.float(), mel_fake.float())
