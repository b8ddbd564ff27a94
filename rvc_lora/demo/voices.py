"""Synthetic 'voices' for the offline demo: a source-filter vowel synthesizer with per-speaker traits.

Each speaker has a pitch range, a vocal-tract length (formant scale), breathiness and vibrato; an
utterance is a few syllables (vowel formant targets, a pitch contour, an amplitude envelope) with
silences between phrases, so that RVC's slicer, pitch trackers and the trainer see speech-like audio.
This is not speech: no words, no consonants beyond noise bursts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from rvc_lora.audio import write_wav

# Formant frequencies (Hz) and bandwidths of a few vowels for an adult tract (formant scale 1.0).
VOWELS = {
    "a": ((730, 1090, 2440), (90, 110, 170)),
    "i": ((270, 2290, 3010), (60, 100, 170)),
    "u": ((300, 870, 2240), (60, 90, 170)),
    "e": ((530, 1840, 2480), (70, 100, 170)),
    "o": ((570, 840, 2410), (80, 90, 170)),
}


@dataclass(frozen=True)
class Speaker:
    """Traits of one synthetic voice."""

    name: str
    f0_hz: float  # centre of the pitch range
    formant_scale: float  # > 1: shorter vocal tract (higher formants)
    breathiness: float  # share of aspiration noise
    vibrato_hz: float


SPEAKERS = (
    Speaker("low_male", 105.0, 0.92, 0.04, 5.0),
    Speaker("tenor", 145.0, 1.0, 0.06, 5.5),
    Speaker("alto", 200.0, 1.08, 0.08, 5.2),
    Speaker("soprano", 270.0, 1.15, 0.05, 6.0),
    Speaker("breathy_target", 225.0, 1.12, 0.25, 4.5),
)


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return lfilter([1 - r], a, x)


def _syllable(speaker: Speaker, rng: np.random.Generator, sr: int, seconds: float, f0_start: float,
              f0_end: float) -> np.ndarray:
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = np.linspace(f0_start, f0_end, n) * (1 + 0.012 * np.sin(2 * np.pi * speaker.vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    # Glottal-like source: a band-limited sawtooth (harmonics up to 4 kHz) plus aspiration noise.
    harmonics = np.arange(1, int(4000 / max(f0.max(), 1)) + 1)
    source = sum(np.sin(h * phase) / h for h in harmonics)
    source = source / np.max(np.abs(source)) + speaker.breathiness * rng.standard_normal(n)
    formants, bandwidths = VOWELS[rng.choice(list(VOWELS))]
    voiced = sum(
        _resonator(source, f * speaker.formant_scale, b, sr) * w
        for f, b, w in zip(formants, bandwidths, (1.0, 0.6, 0.3), strict=True)
    )
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / 0.04)
    return voiced * envelope


def utterance(speaker: Speaker, seed: int, sr: int = 40000, phrases: int = 2) -> np.ndarray:
    """About ``phrases`` x 1.5-2.5 s of syllables separated by ~0.6 s silences, peak 0.6. Shape [T]."""
    rng = np.random.default_rng(seed)
    parts = [np.zeros(int(0.3 * sr))]
    for _ in range(phrases):
        f0 = speaker.f0_hz * rng.uniform(0.9, 1.1)
        for _ in range(rng.integers(6, 10)):
            nxt = float(np.clip(f0 * rng.uniform(0.88, 1.12), speaker.f0_hz * 0.7, speaker.f0_hz * 1.4))
            parts.append(_syllable(speaker, rng, sr, rng.uniform(0.18, 0.3), f0, nxt))
            f0 = nxt
        parts.append(np.zeros(int(rng.uniform(0.5, 0.8) * sr)))
    audio = np.concatenate(parts)
    return (0.6 * audio / np.max(np.abs(audio))).astype(np.float32)


def write_speaker(folder: Path, speaker: Speaker, count: int, seed: int, sr: int = 40000) -> list[Path]:
    """Write ``count`` utterances of one speaker as WAV files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{speaker.name}_{i:02d}.wav"
        if not path.exists():
            write_wav(path, utterance(speaker, seed * 1000 + i, sr), sr)
        paths.append(path)
    return paths
