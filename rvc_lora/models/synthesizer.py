"""RVC's synthesizers (VITS-style): v1 (256-d content) / v2 (768-d content), with or without pitch.

One class covers RVC's four ``SynthesizerTrnMs{256,768}NSFsid[_nono]`` classes with identical
state-dict keys, shapes and key order (v1: enc_p, dec, enc_q, flow, emb_g; v2 registers enc_p last).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .configs import parse_sample_rate, shipped_config
from .encoders import PosteriorEncoder, TextEncoder
from .generator import Generator, GeneratorNSF
from .modules import ResidualCouplingBlock

__all__ = ["CONTENT_DIMS", "FLOW_CONTEXT", "Synthesizer", "build_synthesizer", "rand_slice_segments", "slice_segments"]

#: content feature size per RVC version
CONTENT_DIMS = {"v1": 256, "v2": 768}
#: frames of left context the flow needs (4 coupling layers x 3 WN convs of kernel 5: 4 * 3 * 2 frames)
FLOW_CONTEXT = 24
_CONFIG_LEN = 18


def slice_segments(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """Cut ``size`` steps from the last axis of ``x`` (``[B, ..., T]``) starting at ``starts`` ``[B]``.

    Steps beyond the end of ``x`` are zero. Returns ``[B, ..., size]``.
    """
    t = x.size(-1)
    index = starts.to(x.device).long().unsqueeze(1) + torch.arange(size, device=x.device).unsqueeze(0)  # [B, size]
    valid = index < t
    index = index.clamp(max=t - 1)
    shape = (x.size(0),) + (1,) * (x.dim() - 2) + (size,)
    index = index.view(shape).expand(*x.shape[:-1], size)
    out = torch.gather(x, -1, index)
    return out * valid.view(shape).to(out.dtype)


def rand_slice_segments(
    x: torch.Tensor, lengths: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``size``-step window of each item of ``x`` ``[B, C, T]`` within its length ``[B]``.

    Start = floor(U[0,1) * (length - size + 1)) with one ``torch.rand(B)`` draw on the CPU generator
    (as RVC); items shorter than ``size`` start at 0 and are zero-padded. Returns (``[B, C, size]``,
    starts ``[B]`` long).
    """
    max_start = (lengths.to("cpu") - size + 1).clamp(min=1)
    starts = (torch.rand(x.size(0)) * max_start).long().to(x.device)
    return slice_segments(x, starts, size), starts


class Synthesizer(nn.Module):
    """RVC synthesizer built from an 18-item RVC config list.

    Args:
        config: ``[spec_channels, segment_frames, inter, hidden, filter, n_heads, n_layers, kernel_size,
            p_dropout, resblock, resblock_kernel_sizes, resblock_dilation_sizes, upsample_rates,
            upsample_initial_channel, upsample_kernel_sizes, spk_embed_dim, gin_channels, sr]``;
            ``sr`` is int Hz or "32k"/"40k"/"48k".
        version: "v1" (256-d content) or "v2" (768-d content).
        f0: pitch-conditioned model (NSF decoder, ``emb_pitch``) or not.

    Attributes: ``config``, ``version``, ``f0``, ``sample_rate`` (Hz), ``hop_length`` (samples per
    frame = prod(upsample_rates)), ``segment_frames`` (training window, ``config[1]``; may be
    reassigned), submodules ``enc_p``, ``dec``, ``enc_q``, ``flow``, ``emb_g``.
    """

    def __init__(self, config: Sequence, version: str, f0: bool) -> None:
        super().__init__()
        if version not in CONTENT_DIMS:
            raise ValueError(f"unknown RVC version {version!r}; expected 'v1' or 'v2'")
        if len(config) != _CONFIG_LEN:
            raise ValueError(f"RVC config must have {_CONFIG_LEN} items, got {len(config)}: {config!r}")
        (spec_channels, segment_frames, inter, hidden, filter_channels, n_heads, n_layers, kernel_size,
         p_dropout, resblock, rk, rd, rates, uic, uk, spk_embed_dim, gin, sr) = config
        self.config = list(config)
        self.version = version
        self.f0 = bool(f0)
        self.sample_rate = parse_sample_rate(sr)
        self.hop_length = math.prod(rates)
        self.segment_frames = int(segment_frames)
        self.inter_channels = inter
        self.spec_channels = spec_channels

        def text_encoder() -> TextEncoder:
            return TextEncoder(
                CONTENT_DIMS[version], inter, hidden, filter_channels, n_heads, n_layers, kernel_size,
                float(p_dropout), f0=self.f0,
            )

        if version == "v1":
            self.enc_p = text_encoder()
        if self.f0:
            self.dec: Generator | GeneratorNSF = GeneratorNSF(
                inter, resblock, rk, rd, rates, uic, uk, gin_channels=gin, sr=self.sample_rate
            )
        else:
            self.dec = Generator(inter, resblock, rk, rd, rates, uic, uk, gin_channels=gin)
        self.enc_q = PosteriorEncoder(spec_channels, inter, hidden, 5, 1, 16, gin_channels=gin)
        self.flow = ResidualCouplingBlock(inter, hidden, 5, 1, 3, 4, gin_channels=gin)
        self.emb_g = nn.Embedding(spk_embed_dim, gin)
        if version == "v2":
            self.enc_p = text_encoder()

    def _check_pitch(self, pitch: torch.Tensor | None, pitchf: torch.Tensor | None) -> None:
        if self.f0 and (pitch is None or pitchf is None):
            raise ValueError("this is a pitch (f0) model: pitch and f0 tensors are required")

    def forward(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor | None,
        pitchf: torch.Tensor | None,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        sid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Training pass.

        Args: phone ``[B, T, C]``, phone_lengths ``[B]``, pitch ``[B, T]`` long and pitchf ``[B, T]`` Hz
        (None for no-f0 models), spec ``[B, spec_channels, T]``, spec_lengths ``[B]``, sid ``[B]`` long.
        Returns: (wave ``[B, 1, segment_frames * hop]``, ids_slice ``[B]`` (start frames), x_mask
        ``[B, 1, T]``, y_mask ``[B, 1, T]``, (z, z_p, m_p, logs_p, m_q, logs_q) each ``[B, inter, T]``).
        RNG order: randn (posterior sample), rand(B) (segment starts), then the decoder's draws.
        """
        self._check_pitch(pitch, pitchf)
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch if self.f0 else None, phone_lengths)
        z, m_q, logs_q, y_mask = self.enc_q(spec, spec_lengths, g=g)
        z_p = self.flow(z, y_mask, g=g)
        z_slice, ids_slice = rand_slice_segments(z, spec_lengths, self.segment_frames)
        if self.f0:
            f0_slice = slice_segments(pitchf.unsqueeze(1), ids_slice, self.segment_frames).squeeze(1)
            wave = self.dec(z_slice, f0_slice, g=g)
        else:
            wave = self.dec(z_slice, g=g)
        return wave, ids_slice, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q)

    def infer(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor | None,
        nsff0: torch.Tensor | None,
        sid: torch.Tensor,
        noise_scale: float = 0.66666,
        skip_head: int | None = None,
        return_length: int | None = None,
        start_phase: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Conversion pass.

        Args: phone ``[B, T, C]`` (content at 100 fps), phone_lengths ``[B]``, pitch ``[B, T]`` long
        (coarse 1..255) and nsff0 ``[B, T]`` Hz (None for no-f0 models), sid ``[B]`` long.
        Realtime options (RVC's): ``skip_head`` / ``return_length`` decode only frames
        ``[skip_head, skip_head + return_length)``: the text encoder still attends over all ``T`` frames,
        the flow runs from ``skip_head - FLOW_CONTEXT`` on (its whole receptive field, so its output on
        the kept frames is unchanged) and the decoder sees only the kept frames.
        ``start_phase`` ``[B]`` (turns): phase of the NSF sine before the first decoded sample.
        Returns: (audio ``[B, 1, L * hop]``, x_mask ``[B, 1, L]``, (z, z_p, m_p, logs_p)) with
        ``L = return_length`` (default: all frames from ``skip_head``); z_p, m_p, logs_p start at
        ``skip_head - FLOW_CONTEXT`` (clamped at 0).
        RNG order: ``randn_like(m_p)``, then the decoder's rand (initial phase) and randn (source noise).
        Like RVC, gradients are not disabled here: wrap calls in ``torch.inference_mode()``.
        """
        self._check_pitch(pitch, nsff0)
        head = int(skip_head or 0)
        length = phone.shape[1] - head if return_length is None else int(return_length)
        if head < 0 or length <= 0 or head + length > phone.shape[1]:
            raise ValueError(f"skip_head {head} + return_length {length} must lie within the {phone.shape[1]} "
                             "input frames")
        flow_head = max(head - FLOW_CONTEXT, 0)
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch if self.f0 else None, phone_lengths, skip_head=flow_head)
        z_p = (m_p + torch.exp(logs_p) * torch.randn_like(m_p) * noise_scale) * x_mask
        z = self.flow(z_p, x_mask, g=g, reverse=True)
        dec_head = head - flow_head
        if dec_head or z.shape[2] != length:
            z, x_mask = z[:, :, dec_head:dec_head + length], x_mask[:, :, dec_head:dec_head + length]
        if self.f0:
            audio = self.dec(z * x_mask, nsff0[:, head:head + length], g=g, start_phase=start_phase)
        else:
            audio = self.dec(z * x_mask, g=g)
        return audio, x_mask, (z, z_p, m_p, logs_p)


def build_synthesizer(
    version: str = "v2", sample_rate: int | str = 40000, f0: bool = True, config: Sequence | None = None
) -> Synthesizer:
    """A freshly initialised RVC synthesizer; ``config`` defaults to RVC's shipped config for
    (version, sample_rate) (v2 40k uses the v1 40k list)."""
    if config is None:
        config = shipped_config(version, sample_rate)
    return Synthesizer(config, version, f0)
