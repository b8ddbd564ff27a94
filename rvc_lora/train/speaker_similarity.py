"""Speaker similarity of generated speech to real clips: resemblyzer's d-vectors, cosine (optional dependency).

Used by ``trainer.best_metric=speaker_similarity`` to pick the best step by how much the validation
conversions sound like the voice, not only by reconstruction loss. resemblyzer (``pip install
'rvc-lora[bench]'`` or ``pip install resemblyzer``) ships its small pretrained speaker encoder.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence

import numpy as np

from rvc_lora.config_schema import BestMetric
from rvc_lora.utils import RVCLoraError

__all__ = ["BEST_METRICS", "SpeakerSimilarity", "resemblyzer_available", "resolve_best_metric"]

# trainer.best_metric values: auto = speaker_similarity when resemblyzer is installed, else mel_l1.
BEST_METRICS = tuple(metric.value for metric in BestMetric)
EMBED_RATE = 16000


def resemblyzer_available() -> bool:
    return importlib.util.find_spec("resemblyzer") is not None


def resolve_best_metric(name: str) -> str:
    """``mel_l1`` or ``speaker_similarity`` for a ``trainer.best_metric`` value."""
    if name not in BEST_METRICS:
        raise RVCLoraError(f"trainer.best_metric must be one of {', '.join(BEST_METRICS)}, got {name!r}")
    if name == "auto":
        return "speaker_similarity" if resemblyzer_available() else "mel_l1"
    if name == "speaker_similarity" and not resemblyzer_available():
        raise RVCLoraError("trainer.best_metric=speaker_similarity needs resemblyzer (pip install resemblyzer); "
                           "or use trainer.best_metric=mel_l1")
    return name


class SpeakerSimilarity:
    """resemblyzer's VoiceEncoder on the CPU; ``score(generated, references, sr)`` -> mean cosine."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # resemblyzer's imports (scipy, webrtcvad) warn about deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder("cpu", verbose=False)

    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """Unit d-vector [256] of mono audio [N] at ``sr`` (volume-normalised, silences kept)."""
        from resemblyzer.audio import normalize_volume
        from resemblyzer.hparams import audio_norm_target_dBFS

        from rvc_lora.audio.resample import resample

        wav = resample(np.asarray(audio, dtype=np.float32), int(sr), EMBED_RATE)
        return self.encoder.embed_utterance(normalize_volume(wav, audio_norm_target_dBFS, increase_only=True))

    def score(self, generated: Sequence[np.ndarray], references: Sequence[np.ndarray], sr: int) -> float:
        """Mean over ``generated`` of the cosine to the mean reference d-vector (1 = same voice)."""
        if not generated or not references:
            raise RVCLoraError("speaker similarity needs generated and reference clips")
        profile = np.mean([self.embed(r, sr) for r in references], axis=0)
        profile /= max(float(np.linalg.norm(profile)), 1e-9)
        return float(np.mean([float(np.dot(self.embed(g, sr), profile)) for g in generated]))
