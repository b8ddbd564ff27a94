"""Benchmark conversion on this machine: real-time factor per stage, merged-vs-base cost, adapter swap time.

Builds a full-size RVC v2 40k f0 model with random weights (saved and reloaded like any RVC file), a
full-size random HuBERT-base, and rank-8 adapters on the generator's ups + resblocks, then converts
``--seconds`` of synthetic speech-like audio through :class:`rvc_lora.infer.Converter` with a faiss
retrieval index (index rate 0.75).

    python tools/bench_convert.py               # 30 s of audio
    python tools/bench_convert.py --seconds 5   # shorter
    python tools/bench_convert.py --quick       # 5 s, one repeat, fewer swaps

Prints a markdown table. Real-time factor = processing time / audio duration (lower is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import add_allocator_flag, setup_allocator

from rvc_lora.checkpoint import save_rvc  # noqa: E402
from rvc_lora.demo.random_hubert import make_random_checkpoint  # noqa: E402
from rvc_lora.generator_lora import SynthesizerLoRA  # noqa: E402
from rvc_lora.infer import Converter, StageTimes  # noqa: E402
from rvc_lora.lora import LoRAConfig, lora_layers  # noqa: E402
from rvc_lora.models import build_synthesizer  # noqa: E402


def speech_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Voiced notes with vibrato, separated by short noise bursts and pauses: [seconds * sr] float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 0.3 * t) + 5.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    gate = (np.sin(2 * np.pi * 0.7 * t) > -0.3).astype(np.float64)
    noise = rng.standard_normal(n) * 0.05 * (np.sin(2 * np.pi * 1.9 * t) > 0.8)
    return (0.25 * voiced * gate + noise).astype(np.float32)


def make_adapter(base_path: Path, out: Path, seed: int) -> Path:
    """A rank-8 adapter on ups.* + resblocks.* with non-zero random factors, saved for ``base_path``."""
    from rvc_lora.checkpoint import load_rvc

    synth = load_rvc(base_path).model
    host = SynthesizerLoRA(synth, LoRAConfig(rank=8, alpha=8.0), base_desc=str(base_path))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(synth.dec).values():
            up = layer.adapters["default"].lora_up
            up.copy_(torch.randn(up.shape, generator=gen) * 1e-3)
    return host.save_adapter(out)


def make_index(folder: Path, rows: int) -> Path:
    """An RVC-style IVF index over ``rows`` random 768-dim vectors (RVC trains on the 50 fps features)."""
    from rvc_lora.data.index import save_index, train_index

    feats = np.random.default_rng(0).standard_normal((rows, 768)).astype(np.float32)
    return save_index(train_index(feats), folder, "bench", "v2")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio length to convert (default 30)")
    parser.add_argument("--quick", action="store_true", help="5 s of audio, one repeat, fewer swaps")
    parser.add_argument("--repeats", type=int, default=3, help="timed conversions per model (median)")
    parser.add_argument("--f0-method", default="fcpe", help="pitch method (default fcpe)")
    parser.add_argument("--index-rows", type=int, default=30000,
                        help="vectors in the retrieval index (default 30000, ~10 min of training audio)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--device", default="cpu")
    add_allocator_flag(parser)
    args = parser.parse_args(argv)
    allocator = setup_allocator(args)
    seconds, repeats, swaps = args.seconds, max(1, args.repeats), 10
    if args.quick:
        seconds, repeats, swaps = min(seconds, 5.0), 1, 4
        args.index_rows = min(args.index_rows, 5000)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="rvc-lora-bench-") as tmp_name:
        tmp = Path(tmp_name)
        t_build = time.perf_counter()
        base_path = save_rvc(build_synthesizer("v2", 40000, True), tmp / "base_v2_40k.pth")
        hubert = make_random_checkpoint(tmp / "hubert_base_random.pt", size="base")
        adapter_a = make_adapter(base_path, tmp / "a.safetensors", seed=1)
        adapter_b = make_adapter(base_path, tmp / "b.safetensors", seed=2)
        index = make_index(tmp, args.index_rows)
        t_build = time.perf_counter() - t_build

        t_load = time.perf_counter()
        plain = Converter(base_path, hubert, device=args.device, f0_method=args.f0_method, index=index)
        t_load = time.perf_counter() - t_load
        merged = Converter(base_path, hubert, [(adapter_a, 1.0)], device=args.device, f0_method=args.f0_method,
                           index=index)

        audio = speech_like(seconds)
        warm = speech_like(2.0, seed=1)
        plain.convert(warm, 16000, seed=0)
        merged.convert(warm, 16000, seed=0)

        # Interleaved full conversions: plain, merged, plain, merged, ...
        stage_runs: dict[str, list[StageTimes]] = {"plain": [], "merged": []}
        wall: dict[str, list[float]] = {"plain": [], "merged": []}
        for _ in range(repeats):
            for name, conv in (("plain", plain), ("merged", merged)):
                conv.times = StageTimes()
                wall[name].append(timed(lambda c=conv: c.convert(audio, 16000, seed=0)))
                stage_runs[name].append(conv.times)

        def median_stage(name: str, stage: str) -> float:
            return statistics.median(getattr(s, stage) for s in stage_runs[name])

        swap_times = []
        for i in range(swaps):
            target = adapter_b if i % 2 == 0 else adapter_a
            swap_times.append(timed(lambda t=target: merged.set_adapters([(t, 1.0)])))

    rtf = {name: statistics.median(w) / seconds for name, w in wall.items()}
    synth_ratio = median_stage("merged", "synthesis") / max(median_stage("plain", "synthesis"), 1e-9)
    ratios = [m / p for m, p in zip(wall["merged"], wall["plain"], strict=True)]
    print(f"## rvc-lora convert benchmark ({seconds:g} s of audio, device {args.device}, "
          f"{torch.get_num_threads()} threads, f0 {args.f0_method}, median of {repeats}, {allocator} allocator)\n")
    print("full-size RVC v2 40k f0 synthesizer (random init, loaded from an RVC .pth), "
          f"full-size random HuBERT-base; index: {args.index_rows} vectors, index rate 0.75; "
          "adapter: rank 8 on dec.ups.* + dec.resblocks.*\n")
    print("| stage | seconds (plain base) | RTF (plain) | seconds (merged adapter) | RTF (merged) |")
    print("|---|---:|---:|---:|---:|")
    for stage in ("pitch", "content", "index", "synthesis", "other"):
        p, m = median_stage("plain", stage), median_stage("merged", stage)
        print(f"| {stage} | {p:.3f} | {p / seconds:.4f} | {m:.3f} | {m / seconds:.4f} |")
    p_total, m_total = statistics.median(wall["plain"]), statistics.median(wall["merged"])
    print(f"| **total (wall)** | {p_total:.3f} | **{rtf['plain']:.4f}** | {m_total:.3f} | **{rtf['merged']:.4f}** |")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| merged / plain wall time (median of interleaved pairs) | {statistics.median(ratios):.3f} |")
    print(f"| merged / plain synthesis time | {synth_ratio:.3f} |")
    print(f"| adapter swap (set_adapters, median of {swaps}) | {statistics.median(swap_times) * 1000:.1f} ms |")
    print(f"| adapter swap (min) | {min(swap_times) * 1000:.1f} ms |")
    print(f"| model + HuBERT load (Converter init) | {t_load:.2f} s |")
    print(f"| building random model, HuBERT and adapters | {t_build:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
