"""Throughput of ``rvc-lora prepare`` per stage on generated audio (seconds of audio per wall-clock second).

    .venv/bin/python tools/bench_prepare.py [--seconds 60] [--workers 2] [--pitch auto]

Generates harmonic "voice" tones separated by silences (44.1 kHz mono WAV files of ~10 s), a randomly
initialised full-size HuBERT (``make_random_checkpoint(size="base")``), and runs the whole pipeline for
RVC v2 40 kHz. Prints a markdown table. Stage times come from ``PrepareReport.timings``; the content
stage includes loading the HuBERT (shown separately too).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from bench_common import add_allocator_flag, setup_allocator


def make_audio(folder: Path, seconds: float, sr: int = 44100, seed: int = 0) -> float:
    """Write ~``seconds`` of tone-and-silence audio as 10 s files; return the exact total length."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total, i = 0.0, 0
    while total < seconds:
        parts = []
        for _ in range(3):
            dur = rng.uniform(1.5, 3.0)
            f0 = rng.uniform(110, 330) * 2 ** (np.linspace(0, rng.uniform(-0.3, 0.3), int(dur * sr)))
            phase = 2 * np.pi * np.cumsum(f0) / sr
            tone = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.3
            parts += [tone + 0.003 * rng.standard_normal(tone.shape[0]), np.zeros(int(0.5 * sr))]
        x = np.concatenate(parts).astype(np.float32)
        sf.write(folder / f"take_{i:03d}.wav", x, sr, subtype="PCM_16")
        total += x.shape[0] / sr
        i += 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of input audio to generate")
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers")
    parser.add_argument("--pitch", default="auto", help="pitch.method (auto = fcpe without rmvpe weights)")
    parser.add_argument("--model", default="v2_40k", help="model config group")
    add_allocator_flag(parser)
    args = parser.parse_args()
    allocator = setup_allocator(args)

    from rvc_lora.config import load_config
    from rvc_lora.demo.random_hubert import make_random_checkpoint
    from rvc_lora.prepare import run_prepare

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = Path(tmp)
        input_seconds = make_audio(root / "in", args.seconds)
        t0 = time.perf_counter()
        hubert = make_random_checkpoint(root / "hubert_base.pt", layout="fairseq", size="base")
        make_s = time.perf_counter() - t0
        cfg = load_config([
            f"model={args.model}", f"data.input_dir={root / 'in'}", f"data.experiment_dir={root / 'exp'}",
            f"pitch.method={args.pitch}", f"content.path={hubert}", "data.min_total_seconds=1",
            f"data.num_workers={args.workers}", "data.progress=false", "data.name=bench",
        ])
        t0 = time.perf_counter()
        report = run_prepare(cfg)
        wall = time.perf_counter() - t0
        piece_seconds = sum(r.duration_s for r in report.ok_rows)
        t = report.timings
        rows = [
            ("decode + high-pass + slice + resample + write (ingest)", input_seconds, t.get("ingest", 0.0)),
            (f"pitch ({report.pitch_method})", piece_seconds, t.get("pitch", 0.0)),
            ("content (HuBERT base, random init; incl. load)", piece_seconds, t.get("content", 0.0)),
            ("  of which model load", 0.0, t.get("content_model_load", 0.0)),
            ("index (faiss IVF)", piece_seconds, t.get("index", 0.0)),
            ("total run_prepare", input_seconds, wall),
        ]

        import torch

        print(f"{input_seconds:.1f} s of input in {report.files} files -> {len(report.ok_rows)} pieces "
              f"({piece_seconds:.1f} s incl. overlaps); model {args.model}; {os.cpu_count()} CPUs, "
              f"torch threads {torch.get_num_threads()}; workers {args.workers}; {allocator} allocator; "
              f"(random HuBERT written in {make_s:.1f} s, not counted)")
        print()
        print("| stage | audio (s) | wall (s) | audio s / wall s |")
        print("|---|---:|---:|---:|")
        for name, audio, sec in rows:
            speed = f"{audio / sec:.1f}" if audio and sec > 0 else "-"
            print(f"| {name} | {audio:.1f} | {sec:.2f} | {speed} |")


if __name__ == "__main__":
    main()
