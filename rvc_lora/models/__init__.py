"""RVC model layer: synthesizers (v1/v2, with/without pitch), decoders, discriminators, mel settings.

Imports only torch (and librosa/numpy for the mel filterbank); knows nothing of LoRA or checkpoints.
"""

from .configs import SHIPPED_CONFIGS, MelSettings, mel_settings, parse_sample_rate, shipped_config, training_config
from .discriminator import MultiPeriodDiscriminator, build_discriminator
from .generator import Generator, GeneratorNSF
from .mel import mel_spectrogram, spec_to_mel, spectrogram
from .synthesizer import Synthesizer, build_synthesizer

__all__ = [
    "SHIPPED_CONFIGS",
    "Generator",
    "GeneratorNSF",
    "MelSettings",
    "MultiPeriodDiscriminator",
    "Synthesizer",
    "build_discriminator",
    "build_synthesizer",
    "mel_settings",
    "mel_spectrogram",
    "parse_sample_rate",
    "shipped_config",
    "spec_to_mel",
    "spectrogram",
    "training_config",
]
