"""What a converted clip is scored on: speaker similarity, F0 error, voicing error, mel L1, DNSMOS.

Speaker embeddings come from :class:`rvc_lora.train.speaker_similarity.SpeakerSimilarity` (resemblyzer),
the same scorer ``trainer.best_metric=speaker_similarity`` uses.
"""

from __future__ import annotations

import numpy as np
import torch

from rvc_lora.audio.resample import resample
from rvc_lora.features.pitch import get_pitch_extractor
from rvc_lora.models import mel_settings, mel_spectrogram
from rvc_lora.train.speaker_similarity import SpeakerSimilarity

SR16 = 16000
PITCH_HOP = 160  # the package's pitch extractors give 100 frames/s at 16 kHz


class Scorer:
    """Loads resemblyzer, the pitch extractor and (lazily) DNSMOS once."""

    def __init__(self, f0_method: str, dnsmos: bool = True, dnsmos_clips: int | None = None) -> None:
        self.similarity = SpeakerSimilarity()
        self.pitch = get_pitch_extractor(f0_method, device="cpu")
        self.use_dnsmos = dnsmos
        self.dnsmos_clips = dnsmos_clips  # DNSMOS on at most this many clips per set (None: all)

    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray:
        return self.similarity.embed(audio, sr)

    def profile(self, clips: list[tuple[np.ndarray, int]]) -> np.ndarray:
        """Unit mean d-vector of reference clips."""
        mean = np.mean([self.embed(a, sr) for a, sr in clips], axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-9)

    def f0(self, audio: np.ndarray, sr: int) -> np.ndarray:
        x = resample(np.asarray(audio, np.float32), sr, SR16)
        return np.asarray(self.pitch(x, x.shape[0] // PITCH_HOP), dtype=np.float64)

    def dnsmos(self, audio: np.ndarray, sr: int) -> float:
        from speechmos import dnsmos

        x = np.clip(resample(np.asarray(audio, np.float32), sr, SR16), -1.0, 1.0)
        return float(dnsmos.run(x, SR16)["ovrl_mos"])


def f0_errors(reference_hz: np.ndarray, output_hz: np.ndarray) -> tuple[float, float]:
    """(mean absolute error in cents over frames voiced in both, share of frames whose voicing differs)."""
    n = min(reference_hz.shape[0], output_hz.shape[0])
    ref, out = reference_hz[:n], output_hz[:n]
    both = (ref > 0) & (out > 0)
    cents = float(np.mean(np.abs(1200.0 * np.log2(out[both] / ref[both])))) if both.any() else float("nan")
    voicing = float(np.mean((ref > 0) != (out > 0))) if n else float("nan")
    return cents, voicing


def mel_l1(reference: np.ndarray, output: np.ndarray, sr: int) -> float:
    """Mean |log-mel difference| with RVC's v1 mel settings at ``sr`` (clips cut to the shorter)."""
    settings = mel_settings("v1", sr)
    n = min(reference.shape[0], output.shape[0])
    mels = [mel_spectrogram(torch.from_numpy(np.asarray(x[:n], np.float32)).unsqueeze(0), settings)
            for x in (reference, output)]
    return float(torch.nn.functional.l1_loss(mels[1], mels[0]))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-9))
