"""Benchmark conversion on this machine: rvc-lora's execution against RVC's, precisions, adapter costs.

Builds a full-size RVC v2 40k f0 model with random weights (saved and reloaded like any RVC file), a
full-size random HuBERT-base, and rank-8 adapters on the generator's ups + resblocks, then converts
``--seconds`` of synthetic speech-like audio through :class:`rvc_lora.infer.Converter` with a faiss
retrieval index (index rate 0.75). Variants run interleaved (one conversion of each per round, the
order rotated every round), in one process, so they share the allocator settings and the machine's load:

- ``rvc``: the model run the plain way, as RVC runs it: weight-norm hooks recomputing every weight on
  every call, default ``[B, C, T]`` layout, fp32 (the same pipeline around it);
- ``fp32``: rvc-lora's default on CPU: weight norm folded once at load, channels-last convolutions;
- ``live adapter``: ``fp32`` plus a rank-8 adapter given at load (merged in place, swappable);
- ``merged file``: ``fp32`` on a merged model file (fp32) of the same adapter;

then ``mixed`` and ``bf16`` against ``fp32`` on a shorter clip (``--precision-seconds``), with their
quality deltas against fp32 on the same clip and seed: waveform SNR, F0 difference (cents, fcpe),
speaker-embedding cosine (resemblyzer) and DNSMOS OVRL (speechmos), when those packages are installed.

    python tools/bench_convert.py                          # 30 s of audio, 3 rounds
    python tools/bench_convert.py --no-malloc-tuning       # the same with glibc's default allocator
    python tools/bench_convert.py --quick                  # 5 s, one round, fewer swaps

Prints markdown tables. Real-time factor = processing time / audio duration (lower is faster).
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

from bench_common import add_allocator_flag, random_adapter, setup_allocator

from rvc_lora.checkpoint import load_rvc, save_rvc  # noqa: E402
from rvc_lora.demo.random_hubert import make_random_checkpoint  # noqa: E402
from rvc_lora.infer import Converter, StageTimes  # noqa: E402
from rvc_lora.infer.precision import cpu_has_native_bf16  # noqa: E402
from rvc_lora.merge import merge_adapters  # noqa: E402
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


def make_index(folder: Path, rows: int) -> Path:
    """An RVC-style IVF index over ``rows`` random 768-dim vectors (RVC trains on the 50 fps features)."""
    from rvc_lora.data.index import save_index, train_index

    feats = np.random.default_rng(0).standard_normal((rows, 768)).astype(np.float32)
    return save_index(train_index(feats), folder, "bench", "v2")


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def rvc_style(converter: Converter, base_path: Path) -> Converter:
    """Make ``converter`` run the model as RVC does: weight-norm hooks kept, default layout, fp32."""
    synth = load_rvc(base_path).model.eval()
    if hasattr(synth, "enc_q"):
        del synth.enc_q  # training only
    for p in synth.parameters():
        p.requires_grad_(False)
    converter.synth = synth.to(converter.device, torch.float32)
    return converter


def relative_difference(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|."""
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    err = float(np.sum((out.astype(np.float64) - ref) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)


class Interleaved:
    """Named conversions run in rotated order every round; wall / CPU time and stage times per name."""

    def __init__(self, converters: dict[str, Converter], audio: np.ndarray) -> None:
        self.converters, self.audio = converters, audio
        self.wall: dict[str, list[float]] = {n: [] for n in converters}
        self.cpu: dict[str, list[float]] = {n: [] for n in converters}
        self.stages: dict[str, list[StageTimes]] = {n: [] for n in converters}
        self.outputs: dict[str, np.ndarray] = {}

    def run(self, rounds: int, label: str) -> None:
        names = list(self.converters)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                conv = self.converters[name]
                conv.times = StageTimes()
                wall, cpu, (out, _) = timed(lambda c=conv: c.convert(self.audio, 16000, seed=0))
                self.wall[name].append(wall)
                self.cpu[name].append(cpu)
                self.stages[name].append(conv.times)
                self.outputs[name] = out
                print(f"[{label} round {r + 1}/{rounds}] {name}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr)

    def stage(self, name: str, stage: str) -> float:
        return statistics.median(getattr(s, stage) for s in self.stages[name])

    def ratio(self, name: str, ref: str, measure: str = "wall") -> float:
        """Median over rounds of time(name) / time(ref) (pairs from the same round)."""
        series = self.wall if measure == "wall" else self.cpu
        return statistics.median(a / b for a, b in zip(series[name], series[ref], strict=True))

    def synthesis_ratio(self, name: str, ref: str) -> float:
        return statistics.median(a.synthesis / b.synthesis
                                 for a, b in zip(self.stages[name], self.stages[ref], strict=True))


def quality_deltas(outputs: dict[str, np.ndarray], ref: str, sr: int) -> dict[str, dict[str, float]]:
    """Per variant against ``ref``: SNR, F0 difference (cents), speaker cosine, DNSMOS (when installed)."""
    deltas = {name: {"snr": snr_db(out, outputs[ref]), "rel": relative_difference(out, outputs[ref])}
              for name, out in outputs.items() if name != ref}
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from quality.metrics import Scorer, cosine, f0_errors

        scorer = Scorer("fcpe", dnsmos=True)
    except ImportError as exc:  # resemblyzer / speechmos are in the `bench` extra
        print(f"quality metrics skipped: {exc}", file=sys.stderr)
        return deltas
    try:
        ref_f0, ref_emb = scorer.f0(outputs[ref], sr), scorer.embed(outputs[ref], sr)
        ref_mos = scorer.dnsmos(outputs[ref], sr)
        for name, d in deltas.items():
            out = outputs[name]
            d["f0_cents"] = f0_errors(ref_f0, scorer.f0(out, sr))[0]
            d["speaker_cos"] = cosine(ref_emb, scorer.embed(out, sr))
            d["dnsmos_delta"] = scorer.dnsmos(out, sr) - ref_mos
            d["dnsmos_ref"] = ref_mos
    except Exception as exc:  # noqa: BLE001 - the timings stay worth printing
        print(f"quality metrics failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return deltas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio length to convert (default 30)")
    parser.add_argument("--quick", action="store_true", help="5 s of audio, one round, fewer swaps")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the fp32 variants")
    parser.add_argument("--precision-seconds", type=float, default=5.0,
                        help="clip length for the mixed / bf16 rows (default 5; emulated bf16 is slow)")
    parser.add_argument("--precisions", default="mixed,bf16", help="reduced precisions to measure ('' = none)")
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
        args.precision_seconds = min(args.precision_seconds, 2.0)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    precisions = [p for p in args.precisions.split(",") if p]

    with tempfile.TemporaryDirectory(prefix="rvc-lora-bench-") as tmp_name:
        tmp = Path(tmp_name)
        t_build = time.perf_counter()
        base_path = save_rvc(build_synthesizer("v2", 40000, True), tmp / "base_v2_40k.pth")
        hubert = make_random_checkpoint(tmp / "hubert_base_random.pt", size="base")
        adapter_a = random_adapter(base_path, tmp / "a.safetensors", seed=1)
        adapter_b = random_adapter(base_path, tmp / "b.safetensors", seed=2)
        merged_path = merge_adapters(base_path, [(adapter_a, 1.0)], tmp / "merged.pth", dtype="fp32")
        index = make_index(tmp, args.index_rows)
        t_build = time.perf_counter() - t_build

        def converter(model: Path = base_path, **kwargs) -> Converter:
            return Converter(model, hubert, device=args.device, f0_method=args.f0_method, index=index, **kwargs)

        t_load = time.perf_counter()
        fast = converter()
        t_load = time.perf_counter() - t_load
        main_set = {"rvc": rvc_style(converter(layout="default"), base_path), "fp32": fast,
                    "live adapter": converter(adapters=[(adapter_a, 1.0)]), "merged file": converter(merged_path)}
        warm = speech_like(2.0, seed=1)
        for conv in main_set.values():
            conv.convert(warm, 16000, seed=0)
        bench = Interleaved(main_set, speech_like(seconds))
        bench.run(repeats, "fp32")

        reduced = None
        notes = []
        if precisions:
            clip = speech_like(args.precision_seconds, seed=2)
            reduced_set = {"fp32": fast}
            for precision in precisions:
                reduced_set[precision] = conv = converter(precision=precision)
                if conv.note:
                    notes.append(conv.note)
            reduced = Interleaved(reduced_set, clip)
            reduced.run(1, "precision")

        swap_times = []
        for i in range(swaps):
            target = adapter_b if i % 2 == 0 else adapter_a
            swap_times.append(timed(lambda t=target: main_set["live adapter"].set_adapters([(t, 1.0)]))[0])
        sr = fast.sample_rate

    print(f"## rvc-lora convert benchmark ({seconds:g} s of audio, device {args.device}, "
          f"{torch.get_num_threads()} threads, f0 {args.f0_method}, {repeats} interleaved rounds, "
          f"{allocator} allocator, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'})\n")
    print("full-size RVC v2 40k f0 synthesizer (random init, loaded from an RVC .pth), "
          f"full-size random HuBERT-base; index: {args.index_rows} vectors, index rate 0.75; "
          "adapter: rank 8 on dec.ups.* + dec.resblocks.*\n")
    print("| variant | wall (s) | RTF | CPU (s) | synthesis (s) | speed-up vs rvc (wall) | speed-up (CPU) "
          "| speed-up (synthesis) | max diff vs rvc (rel.) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in main_set:
        wall = statistics.median(bench.wall[name])
        diff = relative_difference(bench.outputs[name], bench.outputs["rvc"])
        print(f"| {name} | {wall:.2f} | {wall / seconds:.4f} | {statistics.median(bench.cpu[name]):.2f} "
              f"| {bench.stage(name, 'synthesis'):.2f} | {1 / bench.ratio(name, 'rvc'):.3f}x "
              f"| {1 / bench.ratio(name, 'rvc', 'cpu'):.3f}x | {1 / bench.synthesis_ratio(name, 'rvc'):.3f}x "
              f"| {diff:.1e} |")
    print()
    print("| stage (median seconds) | " + " | ".join(main_set) + " |")
    print("|---|" + "---:|" * len(main_set))
    for stage in ("pitch", "content", "index", "synthesis", "other"):
        print(f"| {stage} | " + " | ".join(f"{bench.stage(n, stage):.3f}" for n in main_set) + " |")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| live adapter / fp32 base, wall (median of pairs) | {bench.ratio('live adapter', 'fp32'):.3f} |")
    print(f"| live adapter / merged file, wall | {bench.ratio('live adapter', 'merged file'):.3f} |")
    print(f"| live adapter / merged file, synthesis | {bench.synthesis_ratio('live adapter', 'merged file'):.3f} |")
    print(f"| adapter swap (set_adapters, median of {swaps}) | {statistics.median(swap_times) * 1000:.1f} ms |")
    print(f"| model + HuBERT load (Converter init) | {t_load:.2f} s |")
    print(f"| building random model, HuBERT and adapters | {t_build:.2f} s |")
    if reduced is not None:
        deltas = quality_deltas(reduced.outputs, "fp32", sr)
        clip = args.precision_seconds
        print(f"\n### precisions ({clip:g} s clip, one interleaved round, against fp32 on the same clip and seed)\n")
        print("| precision | synthesis (s) | time vs fp32 (synthesis) | wall vs fp32 | SNR vs fp32 (dB) "
              "| max diff (rel.) | F0 diff (cents) | speaker cosine | DNSMOS OVRL delta |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in reduced.converters:
            if name == "fp32":
                print(f"| fp32 | {reduced.stage('fp32', 'synthesis'):.2f} | 1.000 | 1.000 | - | - | - | - | "
                      f"(OVRL {deltas[precisions[0]].get('dnsmos_ref', float('nan')):.3f}) |")
                continue
            d = deltas[name]
            print(f"| {name} | {reduced.stage(name, 'synthesis'):.2f} | {reduced.synthesis_ratio(name, 'fp32'):.3f} "
                  f"| {reduced.ratio(name, 'fp32'):.3f} | {d['snr']:.1f} | {d['rel']:.1e} "
                  f"| {d.get('f0_cents', float('nan')):.2f} | {d.get('speaker_cos', float('nan')):.4f} "
                  f"| {d.get('dnsmos_delta', float('nan')):+.3f} |")
        for note in dict.fromkeys(notes):
            print(f"\nnote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
