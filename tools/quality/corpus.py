"""The synthetic speech world: a voice roster, a seeded sentence generator, and the corpus on disk.

Every voice speaks different random sentences from one word list; each clip is saved as a 22.05 kHz WAV
with its espeak phoneme events (``labels.json``: file -> [[start s, phoneme], ...]). Splits per voice:

* base voices: ``train`` (base synthesizer and content encoder) and ``source`` (held-out sentences that
  are converted to the targets);
* target voices: ``train`` (adaptation data), ``ref`` (the speaker profile for similarity) and ``test``
  (held-out sentences: the similarity ceiling and the reconstruction test).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .espeak import Espeak, VoiceSpec

ADJECTIVES = """quiet bright heavy little golden silver early simple yellow gentle narrow patient careful
sudden ancient modern hollow frozen wooden empty crowded distant honest humble clever lucky purple sleepy
windy rapid steady tender bitter famous formal brave calm eager fancy fresh jolly kind lively proud silly
strong swift tidy warm weary wild young""".split()
NOUNS = """river garden window teacher market kitchen village doctor painter letter engine mountain harbor
basket pocket candle ladder mirror rabbit farmer pencil island bottle castle wagon lantern meadow sailor
forest kettle blanket hammer bridge station orchard violin tiger pepper ribbon shelter compass captain
museum summer winter morning evening planet signal button camera butter""".split()
VERBS = """carried painted watched opened followed finished visited borrowed noticed gathered repaired
covered answered ordered measured delivered counted cleaned lifted pushed pulled moved turned washed
reached touched handed joined kept found took made brought bought sold built""".split()
ADVERBS = """slowly quickly softly loudly gladly rarely often early later nearly always sometimes twice
again""".split()
PREPOSITIONS = "near behind under over beside across through toward inside around".split()
NAMES = "Anna Brian Clara David Ellen Frank Grace Henry Irene James Karen Louis Maria Nora Oscar Paula".split()
NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty".split()


def sentence(rng: random.Random) -> str:
    """One sentence from a handful of templates over the word lists (6-14 words)."""
    a, n, v = rng.choice, rng.choice, rng.choice
    templates = [
        lambda: f"The {a(ADJECTIVES)} {n(NOUNS)} {v(VERBS)} the {n(NOUNS)} {rng.choice(PREPOSITIONS)} the "
                f"{a(ADJECTIVES)} {n(NOUNS)}.",
        lambda: f"{rng.choice(NAMES)} {rng.choice(ADVERBS)} {v(VERBS)} {rng.choice(NUMBERS)} {a(ADJECTIVES)} "
                f"{n(NOUNS)}s {rng.choice(PREPOSITIONS)} the {n(NOUNS)}.",
        lambda: f"Did the {n(NOUNS)} see the {a(ADJECTIVES)} {n(NOUNS)} {rng.choice(PREPOSITIONS)} the "
                f"{n(NOUNS)} this {rng.choice(['morning', 'evening', 'winter', 'summer'])}?",
        lambda: f"In the {a(ADJECTIVES)} {n(NOUNS)}, {rng.choice(NAMES)} and {rng.choice(NAMES)} "
                f"{v(VERBS)} a {a(ADJECTIVES)} {n(NOUNS)}.",
        lambda: f"We {rng.choice(ADVERBS)} {v(VERBS)} the {n(NOUNS)}, then the {a(ADJECTIVES)} {n(NOUNS)} "
                f"{v(VERBS)} it {rng.choice(ADVERBS)}.",
    ]
    return rng.choice(templates)()


# 13 base voices and 3 held-out targets: espeak variants (formant and Klatt synthesis), English accents,
# and per-voice pitch / range / rate.
BASE_VOICES = [
    VoiceSpec("b01_m1_us", "en-us+m1", 45, 50, 165),
    VoiceSpec("b02_m2_rp", "en-gb-x-rp+m2", 40, 40, 160),
    VoiceSpec("b03_m3_sc", "en-gb-scotland+m3", 50, 60, 170),
    VoiceSpec("b04_m4_ca", "en-029+m4", 35, 45, 155),
    VoiceSpec("b05_m5_us", "en-us+m5", 55, 55, 175),
    VoiceSpec("b06_m6_gb", "en+m6", 42, 35, 150),
    VoiceSpec("b07_m7_ny", "en-us-nyc+m7", 48, 65, 180),
    VoiceSpec("b08_f1_us", "en-us+f1", 55, 55, 165),
    VoiceSpec("b09_f2_rp", "en-gb-x-rp+f2", 60, 50, 160),
    VoiceSpec("b10_f3_sc", "en-gb-scotland+f3", 52, 65, 170),
    VoiceSpec("b11_f4_us", "en-us+f4", 65, 45, 155),
    VoiceSpec("b12_klatt_us", "en-us+klatt", 50, 50, 165),
    VoiceSpec("b13_klatt3_gb", "en+klatt3", 58, 60, 170),
]
TARGET_VOICES = [
    VoiceSpec("t1_f5_rp", "en-gb-x-rp+f5", 62, 55, 160),
    VoiceSpec("t2_m8_us", "en-us+m8", 40, 50, 170),
    VoiceSpec("t3_klatt4_ca", "en-029+klatt4", 55, 60, 160),
]
SOURCE_VOICES = ("b01_m1_us", "b09_f2_rp")  # base voices whose held-out sentences are converted


@dataclass(frozen=True)
class CorpusSizes:
    """Seconds of speech per split (a split stops at the first sentence that reaches its length)."""

    base_train: float = 180.0
    source: float = 12.0
    target_train: float = 120.0
    target_ref: float = 20.0
    target_test: float = 15.0


QUICK_SIZES = CorpusSizes(base_train=40.0, source=6.0, target_train=30.0, target_ref=8.0, target_test=6.0)


def voice_splits(sizes: CorpusSizes, base: list[VoiceSpec], targets: list[VoiceSpec],
                 sources: tuple[str, ...]) -> list[tuple[VoiceSpec, str, float]]:
    """(voice, split, seconds) for every split of the corpus."""
    plan = []
    for v in base:
        plan.append((v, "train", sizes.base_train))
        if v.key in sources:
            plan.append((v, "source", sizes.source))
    for v in targets:
        plan += [(v, "train", sizes.target_train), (v, "ref", sizes.target_ref), (v, "test", sizes.target_test)]
    return plan


def build_corpus(root: Path, sizes: CorpusSizes, base: list[VoiceSpec], targets: list[VoiceSpec],
                 sources: tuple[str, ...], seed: int = 0) -> dict:
    """Write ``root/<voice>/<split>/NNNN.wav`` and ``root/labels.json``; skipped when ``root/done.json`` matches.

    Returns the manifest ``{"voices": {...}, "sample_rate": sr}``.
    """
    plan = voice_splits(sizes, base, targets, sources)
    token = {"sizes": asdict(sizes), "voices": [asdict(v) for v in base + targets], "sources": list(sources),
             "seed": seed}
    done = root / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("token") == token:
        return json.loads(done.read_text())
    engine = Espeak()
    labels: dict[str, list] = {}
    for index, (voice, split, seconds) in enumerate(plan):
        rng = random.Random(f"{seed}-{index}-{voice.key}-{split}")
        folder = root / voice.key / split
        folder.mkdir(parents=True, exist_ok=True)
        total, i = 0.0, 0
        while total < seconds:
            utt = engine.synth(sentence(rng), voice)
            audio = utt.audio
            # leading / trailing silence of espeak is short; keep 0.15 s of quiet on both sides
            pad = np.zeros(int(0.15 * utt.sample_rate), np.float32)
            audio = np.concatenate([pad, audio, pad])
            path = folder / f"{i:04d}.wav"
            sf.write(path, audio, utt.sample_rate, subtype="FLOAT")
            labels[path.relative_to(root).as_posix()] = [[round(t + 0.15, 4), p] for t, p in utt.phonemes]
            total += audio.shape[0] / utt.sample_rate
            i += 1
    (root / "labels.json").write_text(json.dumps(labels))
    manifest = {"token": token, "sample_rate": engine.sample_rate,
                "base": [v.key for v in base], "targets": [v.key for v in targets], "sources": list(sources)}
    done.write_text(json.dumps(manifest))
    return manifest


def clips(root: Path, voice: str, split: str) -> list[Path]:
    return sorted((root / voice / split).glob("*.wav"))
