"""Benchmark LoRA inference overhead on RVC's full-size v2 40k generator (CPU or CUDA).

Measures, interleaved in one process so that machine noise hits every variant alike (the order
rotates every round, and each ratio is the median of per-round ratios to the base):
base generator, unmerged LoRA at ranks 4/8/16, and the rank-8 adapter merged; plus trainable
parameters and fp16 adapter file size per rank. Prints a markdown table.

    python tools/bench_lora.py [--seconds 10] [--rounds 3] [--device auto]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import add_allocator_flag, setup_allocator

from rvc_lora.generator_lora import GeneratorLoRA
from rvc_lora.lora import LoRAConfig, fold_all_weight_norm, merge_and_unload
from rvc_lora.models import build_synthesizer
from rvc_lora.utils import resolve_device


def _randomize(lora: GeneratorLoRA) -> None:
    with torch.no_grad():
        for p in lora.lora_parameters():
            p.normal_(0, 0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length per generator call")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--device", default="auto")
    add_allocator_flag(parser)
    args = parser.parse_args()
    allocator = setup_allocator(args)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    synth = build_synthesizer(version="v2", sample_rate=40000, f0=True).eval()
    frames = int(args.seconds * 100)
    x = torch.randn(1, 192, frames, device=device)
    f0 = torch.full((1, frames), 200.0, device=device)
    g = synth.emb_g(torch.tensor([0])).unsqueeze(-1).to(device)

    state = synth.dec.state_dict()

    def fresh_generator() -> torch.nn.Module:
        # Legacy weight-norm modules cannot be deep-copied: rebuild and load the same weights.
        dec = build_synthesizer(version="v2", sample_rate=40000, f0=True).dec
        dec.load_state_dict(state)
        return dec

    base = fresh_generator()
    fold_all_weight_norm(base)  # the plain base as conversion runs it (no weight-norm hooks)
    variants: dict[str, torch.nn.Module] = {"base (weight norm folded)": base}
    sizes: dict[int, tuple[int, int]] = {}
    for rank in (4, 8, 16):
        dec = fresh_generator()
        lora = GeneratorLoRA(dec, LoRAConfig(rank=rank))
        _randomize(lora)
        with tempfile.TemporaryDirectory() as tmp:
            path = lora.save_adapter(Path(tmp) / "a.safetensors")
            sizes[rank] = (sum(p.numel() for p in lora.lora_parameters()), path.stat().st_size)
        variants[f"LoRA r{rank} unmerged"] = dec
        if rank == 8:
            merged = fresh_generator()
            GeneratorLoRA(merged).load_adapter(lora.adapter_state_dict(), adapter_name="default")
            variants["LoRA r8 merged"] = merge_and_unload(merged)
    for module in variants.values():
        module.to(device).eval()

    def run(module: torch.nn.Module) -> float:
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            module(x, f0, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for module in variants.values():  # warm-up
        run(module)
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(run(variants[name]))
    base_name = names[0]
    ratios = {name: statistics.median(t / b for t, b in zip(times[name], times[base_name], strict=True))
              for name in names}

    print(f"RVC v2 40k generator, {args.seconds:g} s of audio, {device}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds (order rotated each round), {allocator} allocator\n")
    print("| variant | time (s) | ratio to base | trainable params | adapter file (fp16) |")
    print("|---|---|---|---|---|")
    for name in variants:
        t = statistics.median(times[name])
        rank = next((r for r in sizes if f"r{r} " in name + " "), None)
        params, size = sizes.get(rank, (None, None)) if rank else (None, None)
        params_s = f"{params:,}" if params else "-"
        size_s = f"{size / 1e6:.2f} MB" if size else "-"
        print(f"| {name} | {t:.2f} | {ratios[name]:.3f} | {params_s} | {size_s} |")


if __name__ == "__main__":
    main()
