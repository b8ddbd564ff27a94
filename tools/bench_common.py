"""What every benchmark script shares: the allocator choice (tuned like the rvc-lora command, or not),
the process's own peak memory, and adapters with random non-zero factors to time and serve."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rvc_lora.utils import tune_allocator


def add_allocator_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default allocator settings (the rvc-lora command tunes them)")


def setup_allocator(args: argparse.Namespace) -> str:
    """Apply the choice (also for worker subprocesses, through the environment); 'tuned' or 'default'."""
    if args.no_malloc_tuning:
        os.environ["RVC_LORA_NO_MALLOC_TUNING"] = "1"
    return "tuned" if tune_allocator() else "default"


def peak_rss_bytes() -> int:
    """This process's own peak resident set size in bytes: VmHWM from /proc (a parent's ``wait4`` figure
    would also count the parent's memory), or ``getrusage`` where there is no /proc."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_adapter(model_path: Path, out: Path, *, seed: int, rank: int = 8, scale: float = 1e-3) -> Path:
    """Save an adapter for the RVC model at ``model_path`` on the default targets (ups.* + resblocks.*) whose
    up factors are ``scale`` x N(0, 1) draws from ``seed`` (a fresh adapter's are zero: an identity)."""
    import torch

    from rvc_lora.checkpoint import load_rvc
    from rvc_lora.generator_lora import SynthesizerLoRA
    from rvc_lora.lora import LoRAConfig, lora_layers

    synth = load_rvc(model_path).model
    host = SynthesizerLoRA(synth, LoRAConfig(rank=rank, alpha=float(rank)), base_desc=str(model_path))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(synth.dec).values():
            up = layer.adapters["default"].lora_up
            up.copy_(torch.randn(up.shape, generator=gen) * scale)
    return host.save_adapter(out)
