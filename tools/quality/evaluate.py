"""Score a model file on one target voice: held-out base-voice sentences converted to the target, and the
target's own held-out sentences reconstructed (converted to itself at key 0).

Results per (model, target) are cached as JSON beside the model, so a resumed benchmark skips them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf

from .metrics import Scorer, cosine, f0_errors, mel_l1

CONVERT_SEED = 0


def read(path: Path) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(str(path), dtype="float32")
    return audio, int(sr)


class World:
    """The clips and speaker profiles an evaluation needs (loaded once)."""

    def __init__(self, corpus: Path, manifest: dict, scorer: Scorer) -> None:
        self.scorer = scorer
        self.sources = {v: [read(p) for p in sorted((corpus / v / "source").glob("*.wav"))]
                        for v in manifest["sources"]}
        self.targets = manifest["targets"]
        self.refs = {t: [read(p) for p in sorted((corpus / t / "ref").glob("*.wav"))] for t in self.targets}
        self.tests = {t: [read(p) for p in sorted((corpus / t / "test").glob("*.wav"))] for t in self.targets}
        self.profiles = {t: scorer.profile(self.refs[t]) for t in self.targets}
        self.source_profiles = {v: scorer.profile(clips) for v, clips in self.sources.items()}
        self.source_f0 = {v: [scorer.f0(a, sr) for a, sr in clips] for v, clips in self.sources.items()}
        self.median_f0 = {k: float(np.median(np.concatenate([f[f > 0] for f in fs])))
                          for k, fs in {**self.source_f0,
                                        **{t: [scorer.f0(a, sr) for a, sr in self.refs[t]] for t in self.targets}
                                        }.items()}

    def key(self, source: str, target: str) -> int:
        """Semitones that bring the source's median f0 to the target's (as a user would transpose)."""
        return int(round(12 * math.log2(self.median_f0[target] / self.median_f0[source])))

    def references(self) -> dict[str, dict[str, float]]:
        """Per target: the ceiling (held-out target sentences vs the profile) and the unconverted source."""
        out = {}
        for t in self.targets:
            ceiling = [cosine(self.scorer.embed(a, sr), self.profiles[t]) for a, sr in self.tests[t]]
            source = [cosine(self.scorer.embed(a, sr), self.profiles[t]) for clips in self.sources.values()
                      for a, sr in clips]
            dns = ([self.scorer.dnsmos(a, sr) for a, sr in self.tests[t][:self.scorer.dnsmos_clips]]
                   if self.scorer.use_dnsmos else [])
            out[t] = {"ceiling": float(np.mean(ceiling)), "ceiling_sd": float(np.std(ceiling)),
                      "source_unconverted": float(np.mean(source)),
                      "dnsmos_natural": float(np.mean(dns)) if dns else float("nan")}
        return out


def _cache_path(model: Path, target: str) -> Path:
    return model.with_name(f"{model.stem}.{target}.eval.json")


def cached_evaluation(model: Path, target: str, dnsmos: bool = False) -> dict | None:
    """The saved metrics of ``model`` on ``target`` if they are newer than the model (and have DNSMOS if asked)."""
    cache = _cache_path(model, target)
    if cache.is_file() and cache.stat().st_mtime >= model.stat().st_mtime:
        cached = json.loads(cache.read_text())
        if not dnsmos or not math.isnan(cached.get("dnsmos", float("nan"))):
            return cached
    return None


def evaluate(world: World, model: Path, target: str, encoder: Path, f0_method: str, dnsmos: bool) -> dict:
    """Metrics of ``model`` converting to ``target`` (cached in ``<model>.<target>.json``)."""
    cached = cached_evaluation(model, target, dnsmos)
    if cached is not None:
        return cached
    from rvc_lora.infer import Converter

    conv = Converter(model, encoder, device="cpu", f0_method=f0_method, content_kind="torchscript")
    sims, leaks, cents, voicing, dns = [], [], [], [], []
    for source, clips in world.sources.items():
        key = world.key(source, target)
        for (audio, sr), f0_src in zip(clips, world.source_f0[source], strict=True):
            out, out_sr = conv.convert(audio, sr, pitch=key, seed=CONVERT_SEED)
            emb = world.scorer.embed(out, out_sr)
            sims.append(cosine(emb, world.profiles[target]))
            leaks.append(cosine(emb, world.source_profiles[source]))
            c, v = f0_errors(f0_src * 2.0 ** (key / 12.0), world.scorer.f0(out, out_sr))
            cents.append(c)
            voicing.append(v)
            if dnsmos and (world.scorer.dnsmos_clips is None or len(dns) < world.scorer.dnsmos_clips):
                dns.append(world.scorer.dnsmos(out, out_sr))
    recon = []
    for audio, sr in world.tests[target]:
        out, out_sr = conv.convert(audio, sr, pitch=0, seed=CONVERT_SEED)
        from rvc_lora.audio.resample import resample

        recon.append(mel_l1(resample(audio, sr, out_sr), out, out_sr))
    result = {"similarity": float(np.mean(sims)), "source_similarity": float(np.mean(leaks)),
              "f0_cents": float(np.nanmean(cents)), "voicing_error": float(np.mean(voicing)),
              "recon_mel_l1": float(np.mean(recon)), "dnsmos": float(np.mean(dns)) if dns else float("nan")}
    cache = _cache_path(model, target)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(cache)
    return result
