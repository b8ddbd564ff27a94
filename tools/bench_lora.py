"""Benchmark adapter algorithms on RVC's full-size v2 40k generator (CPU or CUDA): speed live and merged,
size, and which forward mode trains faster per layer kind and shape.

Inference (``torch.inference_mode``, 10 s of audio by default): the base generator, each algorithm at
its preset size live (rebuild mode: the effective weight built once per forward) and merged, and LoRA r8
live in bypass mode (a branch on the activations) for comparison. Variants run interleaved, the order
rotating every round; each ratio is the median of per-round ratios, so machine load hits every variant
alike. Also trainable parameters and fp16 adapter-file size per algorithm.

Training (gradients on, a batch of RVC's 12800-sample training segments): forward + backward of every
distinct adapted layer (kind, shape, input length) with a LoRA r8 adapter in bypass and in rebuild mode,
and of the whole generator in each mode and in ``auto`` (the per-kind choice in ``layers.TRAINING_MODE``).

    python tools/bench_lora.py [--seconds 10] [--rounds 5] [--train-rounds 5] [--batch 4] [--device auto]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_common import add_allocator_flag, setup_allocator

from rvc_lora.generator_lora import GeneratorLoRA
from rvc_lora.lora import LoRAConfig, LoRALayer, fold_all_weight_norm, lora_layers, merge_and_unload, set_forward_mode
from rvc_lora.lora.layers import TRAINING_MODE
from rvc_lora.models import build_synthesizer
from rvc_lora.utils import resolve_device

# The presets of conf/lora (default, loha, lokr, dora) and a full delta.
ALGORITHMS = {
    "LoRA r8": LoRAConfig(rank=8, alpha=8),
    "LoHa r4": LoRAConfig(rank=4, alpha=4, algorithm="loha"),
    "LoKr r8": LoRAConfig(rank=8, alpha=8, algorithm="lokr"),
    "DoRA r8": LoRAConfig(rank=8, alpha=8, algorithm="dora"),
    "full delta": LoRAConfig(algorithm="full"),
}
SEGMENT_FRAMES = 32  # RVC v2 40k trains on 12800-sample segments: 32 frames at the generator's input


def _generator_factory() -> Callable[[], torch.nn.Module]:
    state = build_synthesizer(version="v2", sample_rate=40000, f0=True).dec.state_dict()

    def fresh() -> torch.nn.Module:
        # Legacy weight-norm modules cannot be deep-copied: rebuild and load the same weights.
        dec = build_synthesizer(version="v2", sample_rate=40000, f0=True).dec
        dec.load_state_dict(state)
        return dec

    return fresh


def _randomize(host: GeneratorLoRA, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in host.lora_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)


def _interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Times of each run over ``rounds`` rounds, the order rotated every round (after one warm-up each).

    Progress goes to stderr (one line per round) so a long run shows it is alive; the table goes to stdout.
    """
    started = time.perf_counter()
    for run in runs.values():
        run()
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        print(f"  round {r + 1}/{rounds} of {len(names)} variants ({time.perf_counter() - started:.0f} s so far)",
              file=sys.stderr, flush=True)
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(runs[name]())
    return times


def _ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    return statistics.median(t / b for t, b in zip(times[name], times[reference], strict=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def inference(args: argparse.Namespace, device: torch.device, fresh: Callable[[], torch.nn.Module]) -> None:
    frames = int(args.seconds * 100)
    x = torch.randn(1, 192, frames, device=device)
    f0 = torch.full((1, frames), 200.0, device=device)
    g = torch.randn(1, 256, 1, device=device)
    base = fresh()
    fold_all_weight_norm(base)  # the plain base as conversion runs it (no weight-norm hooks)
    variants: dict[str, torch.nn.Module] = {"base (weight norm folded)": base}
    sizes: dict[str, tuple[int, int]] = {}
    for label, config in ALGORITHMS.items():
        dec = fresh()
        host = GeneratorLoRA(dec, config)
        _randomize(host)
        with tempfile.TemporaryDirectory() as tmp:
            path = host.save_adapter(Path(tmp) / "a.safetensors")
            sizes[label] = (sum(p.numel() for p in host.lora_parameters()), path.stat().st_size)
        if label == "LoRA r8":
            bypass = fresh()
            GeneratorLoRA(bypass).load_adapter(host.adapter_state_dict(), adapter_name="default")
            set_forward_mode(bypass, "bypass")
            variants[f"{label} live, bypass"] = bypass
        variants[f"{label} live"] = dec  # forward_mode "auto": rebuild without gradients
        merged = fresh()
        GeneratorLoRA(merged).load_adapter(host.adapter_state_dict(), adapter_name="default")
        variants[f"{label} merged"] = merge_and_unload(merged)
    for module in variants.values():
        module.to(device).eval()

    def timer(module: torch.nn.Module) -> Callable[[], float]:
        def run() -> float:
            torch.manual_seed(0)
            _sync(device)
            start = time.perf_counter()
            with torch.inference_mode():
                module(x, f0, g)
            _sync(device)
            return time.perf_counter() - start
        return run

    times = _interleaved({name: timer(m) for name, m in variants.items()}, args.rounds)
    base_name = next(iter(variants))
    print(f"## Inference: RVC v2 40k generator, {args.seconds:g} s of audio, median of {args.rounds} interleaved "
          "rounds\n")
    print("| variant | time (s) | ratio to its merged | ratio to base | trainable params | adapter file (fp16) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        label = next((a for a in ALGORITHMS if name.startswith(a)), None)
        to_merged = f"{_ratio(times, name, f'{label} merged'):.3f}" if label else "-"
        params, size = sizes.get(label, (None, None))
        print(f"| {name} | {statistics.median(times[name]):.2f} | {to_merged} | {_ratio(times, name, base_name):.3f} "
              f"| {f'{params:,}' if params else '-'} | {f'{size / 1e6:.2f} MB' if size else '-'} |")
    print()


def _layer_inputs(dec: torch.nn.Module, x, f0, g) -> dict[str, tuple[int, ...]]:
    """Input shape of every adapted layer in one forward of ``dec``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(qname: str):
        def hook(module, args) -> None:
            shapes.setdefault(qname, tuple(args[0].shape))
        return hook

    hooks = [layer.register_forward_pre_hook(record(q)) for q, layer in lora_layers(dec).items()]
    with torch.no_grad():
        dec(x, f0, g)
    for h in hooks:
        h.remove()
    return shapes


def _describe(layer: LoRALayer) -> str:
    b = layer.base
    if layer.kind == "conv_transpose1d":
        return f"{b.in_channels}->{b.out_channels} k{b.kernel_size[0]} s{b.stride[0]}"
    return f"{b.in_channels}->{b.out_channels} k{b.kernel_size[0]} d{b.dilation[0]}"


def training(args: argparse.Namespace, device: torch.device, fresh: Callable[[], torch.nn.Module]) -> None:
    batch, frames = args.batch, SEGMENT_FRAMES
    x = torch.randn(batch, 192, frames, device=device)
    f0 = torch.full((batch, frames), 200.0, device=device)
    g = torch.randn(batch, 256, 1, device=device)
    dec = fresh()
    host = GeneratorLoRA(dec, ALGORITHMS["LoRA r8"])
    _randomize(host)
    dec.to(device).train()
    inputs = _layer_inputs(dec, x, f0, g)
    groups: dict[tuple, list[str]] = {}
    layers = lora_layers(dec)
    for qname, layer in layers.items():
        key = (layer.kind, _describe(layer), inputs[qname])
        groups.setdefault(key, []).append(qname)

    def layer_timer(layer: LoRALayer, shape: tuple[int, ...], mode: str) -> Callable[[], float]:
        xin = torch.randn(shape, device=device, requires_grad=True)

        def run() -> float:
            layer.forward_mode = mode
            layer.zero_grad(set_to_none=True)
            _sync(device)
            start = time.perf_counter()
            y = layer(xin)
            y.backward(torch.ones_like(y))
            _sync(device)
            return time.perf_counter() - start
        return run

    runs = {}
    for key, names in groups.items():
        for mode in ("bypass", "rebuild"):
            runs[(key, mode)] = layer_timer(layers[names[0]], key[2], mode)
    times = _interleaved(runs, args.train_rounds)
    print(f"## Training: forward + backward per layer (LoRA r8, batch {batch} x {frames} frames = RVC's 12800-sample "
          f"segments), median of {args.train_rounds} interleaved rounds\n")
    print("| layer kind | shape | input | layers | bypass (ms) | rebuild (ms) | rebuild / bypass | faster |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    totals: dict[str, list[float]] = {}
    for key, names in groups.items():
        kind, desc, shape = key
        tb, tr = (statistics.median(times[(key, m)]) for m in ("bypass", "rebuild"))
        ratio = _ratio(times, (key, "rebuild"), (key, "bypass"))
        total = totals.setdefault(kind, [0.0, 0.0])
        total[0] += tb * len(names)
        total[1] += tr * len(names)
        print(f"| {kind} | {desc} | {'x'.join(map(str, shape))} | {len(names)} | {tb * 1e3:.2f} | {tr * 1e3:.2f} "
              f"| {ratio:.3f} | {'rebuild' if ratio < 1 else 'bypass'} |")
    print("\n| layer kind | all its layers, bypass (ms) | rebuild (ms) | faster | TRAINING_MODE |")
    print("|---|---:|---:|---|---|")
    for kind, (tb, tr) in totals.items():
        print(f"| {kind} | {tb * 1e3:.1f} | {tr * 1e3:.1f} | {'rebuild' if tr < tb else 'bypass'} "
              f"| {TRAINING_MODE[kind]} |")

    def generator_timer(mode: str) -> Callable[[], float]:
        def run() -> float:
            set_forward_mode(dec, mode)
            dec.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            _sync(device)
            start = time.perf_counter()
            dec(x, f0, g).square().mean().backward()
            _sync(device)
            return time.perf_counter() - start
        return run

    times = _interleaved({mode: generator_timer(mode) for mode in ("bypass", "rebuild", "auto")}, args.train_rounds)
    print(f"\n## Training: forward + backward of the whole generator (LoRA r8, batch {batch} x {frames} frames)\n")
    print("| forward mode | time (s) | ratio to bypass |")
    print("|---|---:|---:|")
    for mode in times:
        print(f"| {mode} | {statistics.median(times[mode]):.3f} | {_ratio(times, mode, 'bypass'):.3f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length per inference call")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved inference rounds (median reported)")
    parser.add_argument("--train-rounds", type=int, default=5, help="interleaved training rounds")
    parser.add_argument("--batch", type=int, default=4, help="training batch size")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--device", default="auto")
    add_allocator_flag(parser)
    args = parser.parse_args()
    allocator = setup_allocator(args)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(f"{device}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {allocator} allocator\n")
    fresh = _generator_factory()
    if not args.skip_inference:
        inference(args, device, fresh)
    if not args.skip_training:
        training(args, device, fresh)


if __name__ == "__main__":
    main()
