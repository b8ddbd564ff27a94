"""Per-rate settings of RVC in one place: synthesizer config lists and spectrogram/mel settings.

The 18-item config list is the constructor argument order of RVC's synthesizers and is stored verbatim
in every RVC small model (``cpt["config"]``)::

    [spec_channels, segment_frames, inter_channels, hidden_channels, filter_channels, n_heads, n_layers,
     kernel_size, p_dropout, resblock, resblock_kernel_sizes, resblock_dilation_sizes, upsample_rates,
     upsample_initial_channel, upsample_kernel_sizes, spk_embed_dim, gin_channels, sample_rate]

Index 1 of the lists in :data:`SHIPPED_CONFIGS` is the literal ``32`` that RVC writes into small models
(a placeholder); :func:`training_config` returns the list with the real training segment length.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

__all__ = [
    "SHIPPED_CONFIGS",
    "MelSettings",
    "mel_settings",
    "parse_sample_rate",
    "shipped_config",
    "tiny_config",
    "training_config",
]

_RATE_NAMES = {"32k": 32000, "40k": 40000, "48k": 48000}
_DILATIONS = [[1, 3, 5], [1, 3, 5], [1, 3, 5]]


def _config(spec_channels: int, rates: list[int], kernels: list[int], sample_rate: int) -> list:
    return [spec_channels, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], copy.deepcopy(_DILATIONS),
            rates, 512, kernels, 109, 256, sample_rate]


#: RVC's shipped synthesizer configs keyed by (version, sample rate in Hz). v2 40k reuses v1 40k.
SHIPPED_CONFIGS: dict[tuple[str, int], list] = {
    ("v1", 32000): _config(513, [10, 4, 2, 2, 2], [16, 16, 4, 4, 4], 32000),
    ("v1", 40000): _config(1025, [10, 10, 2, 2], [16, 16, 4, 4], 40000),
    ("v1", 48000): _config(1025, [10, 6, 2, 2, 2], [16, 16, 4, 4, 4], 48000),
    ("v2", 32000): _config(513, [10, 8, 2, 2], [20, 16, 4, 4], 32000),
    ("v2", 40000): _config(1025, [10, 10, 2, 2], [16, 16, 4, 4], 40000),
    ("v2", 48000): _config(1025, [12, 10, 2, 2], [24, 20, 4, 4], 48000),
}



def tiny_config() -> list:
    """RVC's 40k structure at tiny widths (hidden 32, inter 16, upsample 64, 4 speakers, gin 16): the model
    of ``model=tiny`` / ``model=tiny_v1``, the offline demo, the tests' reference fixture and benchmarks.
    Not a voice model. A fresh copy each call."""
    return [1025, 32, 16, 32, 64, 2, 2, 3, 0, "1", [3, 7, 11], copy.deepcopy(_DILATIONS), [10, 10, 2, 2], 64,
            [16, 16, 4, 4], 4, 16, 40000]

@dataclass(frozen=True)
class MelSettings:
    """Spectrogram / mel parameters of one RVC training config (``configs/v*/<rate>.json``).

    ``n_fft`` is RVC's ``filter_length``; ``segment_samples`` is the training ``segment_size``
    (audio samples decoded per training example). ``fmax=None`` means ``sample_rate / 2``.
    """

    sample_rate: int
    n_fft: int
    hop: int
    win: int
    n_mels: int
    segment_samples: int
    fmin: float = 0.0
    fmax: float | None = None

    @property
    def segment_frames(self) -> int:
        """Training segment length in spectrogram frames (``segment_samples // hop``)."""
        return self.segment_samples // self.hop


_MEL: dict[tuple[str, int], MelSettings] = {
    ("v1", 32000): MelSettings(32000, 1024, 320, 1024, 80, 12800),
    ("v1", 40000): MelSettings(40000, 2048, 400, 2048, 125, 12800),
    ("v1", 48000): MelSettings(48000, 2048, 480, 2048, 128, 11520),
    ("v2", 32000): MelSettings(32000, 1024, 320, 1024, 80, 12800),
    ("v2", 40000): MelSettings(40000, 2048, 400, 2048, 125, 12800),
    ("v2", 48000): MelSettings(48000, 2048, 480, 2048, 128, 17280),
}


def parse_sample_rate(sample_rate: int | str) -> int:
    """Return a sample rate in Hz from an int or one of RVC's names ``"32k"``/``"40k"``/``"48k"``."""
    if isinstance(sample_rate, str):
        if sample_rate in _RATE_NAMES:
            return _RATE_NAMES[sample_rate]
        if sample_rate.isdigit():
            return int(sample_rate)
        raise ValueError(f"unknown sample rate {sample_rate!r}; expected 32k, 40k, 48k or an integer")
    return int(sample_rate)


def _key(version: str, sample_rate: int | str) -> tuple[str, int]:
    key = (version, parse_sample_rate(sample_rate))
    if key not in SHIPPED_CONFIGS:
        known = ", ".join(f"{v}/{sr}" for v, sr in SHIPPED_CONFIGS)
        raise ValueError(f"no RVC config for version {version!r} at {sample_rate} Hz (known: {known})")
    return key


def shipped_config(version: str, sample_rate: int | str) -> list:
    """A fresh copy of RVC's config list for ``version`` ("v1"/"v2") and ``sample_rate``."""
    return copy.deepcopy(SHIPPED_CONFIGS[_key(version, sample_rate)])


def training_config(version: str, sample_rate: int | str) -> list:
    """Like :func:`shipped_config` but with index 1 set to the training segment length in frames."""
    config = shipped_config(version, sample_rate)
    config[1] = mel_settings(version, sample_rate).segment_frames
    return config


def mel_settings(version: str, sample_rate: int | str) -> MelSettings:
    """Spectrogram / mel settings used by RVC training for ``version`` at ``sample_rate``."""
    return _MEL[_key(version, sample_rate)]
