"""Benchmark training modes side by side: seconds per step, peak memory, trainable parameters.

Modes: full fine-tune (adapter=none), LoRA r8 with D trained, D every 2 / every 4 steps, D frozen,
mel-only. Each mode runs in a fresh subprocess (so peak memory is its own: VmHWM from /proc, or
the CUDA peak on GPU) on the same synthetic batch; the first step is warm-up and not timed.

    python tools/bench_train.py                 # full-size v2 40k, batch 1, 3 timed steps
    python tools/bench_train.py --tiny --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import add_allocator_flag, peak_rss_bytes, setup_allocator

MODES = {
    "full fine-tune (adapter=none)": ["adapter=none", "trainer.discriminator=train"],
    "LoRA r8, D trained": ["trainer.discriminator=train"],
    "LoRA r8, D every 2": ["trainer.discriminator=every_k", "trainer.d_every=2"],
    "LoRA r8, D every 4": ["trainer.discriminator=every_k", "trainer.d_every=4"],
    "LoRA r8, D frozen": ["trainer.discriminator=frozen"],
    "LoRA r8, mel only": ["trainer.discriminator=mel_only"],
}

def _fabricate(root: Path, tiny: bool) -> None:
    """A 3-piece v2 40 kHz experiment of random audio and a random base generator."""
    import numpy as np
    import soundfile as sf
    import torch

    from rvc_lora.checkpoint import save_pretrained
    from rvc_lora.data.experiment import ExperimentInfo, ExperimentLayout, ManifestRow, write_info, write_manifest
    from rvc_lora.models import build_synthesizer
    from rvc_lora.models.configs import tiny_config

    rng = np.random.default_rng(0)
    layout = ExperimentLayout(root / "exp", "v2")
    layout.make_dirs()
    rows = []
    for i in range(3):
        name = f"0_{i}"
        sf.write(layout.gt_wav(name), (0.1 * rng.standard_normal(80000)).astype(np.float32), 40000, subtype="FLOAT")
        np.save(layout.feature(name), rng.standard_normal((100, 768)).astype(np.float32))
        np.save(layout.f0_hz(name), np.full(201, 150.0))
        np.save(layout.f0_coarse(name), np.full(201, 60, dtype=np.int64))
        rows.append(ManifestRow(name=name, source="bench", split="val" if i == 2 else "train"))
    write_manifest(layout.manifest_path, rows)
    write_info(layout, ExperimentInfo("bench", "v2", 40000, True, 768))
    torch.manual_seed(0)
    synth = build_synthesizer(config=tiny_config() if tiny else None, version="v2", f0=True)
    kwargs = {"config": tiny_config(), "version": "v2", "f0": 1, "sr": "40k"} if tiny else {}
    save_pretrained(synth, root / "G.pth", **kwargs)


def _peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return peak_rss_bytes() / 1e9


def worker(root: Path, overrides: list[str], steps: int, tiny: bool) -> dict:
    import torch

    from rvc_lora.config import load_config
    from rvc_lora.train import Trainer
    from rvc_lora.train.dataset import collate_pieces

    base = [f"data.experiment_dir={root / 'exp'}", f"base.g={root / 'G.pth'}", f"run_dir={root / 'run'}",
            "trainer.batch_size=1", "trainer.resume=false", "logging.tensorboard=false", "lora=default"]
    if tiny:
        base.append("model=tiny")
    trainer = Trainer(load_config(base + overrides))
    batch = collate_pieces([trainer.dataset[0]])
    torch.manual_seed(0)
    trainer.train_step(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
        trainer.step += 1
    elapsed = (time.perf_counter() - start) / steps
    n_params = sum(p.numel() for p in trainer.models.trainable_g)
    d_params = sum(p.numel() for p in trainer.disc.parameters()) if trainer.d_trained else 0
    return {"sec_per_step": elapsed, "peak_gb": _peak_memory_gb(trainer.device),
            "trainable_g": n_params, "trainable_d": d_params}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny test model instead of full v2 40k")
    parser.add_argument("--modes", nargs="*", default=None, help="subset of mode names (default: all)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    add_allocator_flag(parser)
    args = parser.parse_args(argv)
    allocator = setup_allocator(args)
    if args.worker:
        print(json.dumps(worker(Path(args.root), MODES[args.worker], args.steps, args.tiny)))
        return 0
    modes = args.modes or list(MODES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        _fabricate(Path(tmp), args.tiny)
        for mode in modes:
            cmd = [sys.executable, __file__, "--worker", mode, "--root", tmp, "--steps", str(args.steps)]
            cmd += ["--tiny"] if args.tiny else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if proc.returncode != 0:
                print(f"{mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append((mode, json.loads(proc.stdout.strip().splitlines()[-1])))
    size = "tiny" if args.tiny else "v2 40k"
    print(f"\nTraining step benchmark ({size}, batch 1, {args.steps} timed steps after 1 warm-up, "
          f"{allocator} allocator)\n")
    reference = rows[0][1] if rows else None  # ratios are to the first mode (the full fine-tune by default)
    print(f"Ratios are to '{rows[0][0] if rows else '-'}', measured in the same run.\n")
    print("| mode | s/step | time ratio | peak memory (GB) | memory ratio | trainable G params | trainable D params |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, r in rows:
        print(f"| {mode} | {r['sec_per_step']:.3f} | {r['sec_per_step'] / reference['sec_per_step']:.2f}x | "
              f"{r['peak_gb']:.2f} | {r['peak_gb'] / reference['peak_gb']:.2f}x | {r['trainable_g']:,} | "
              f"{r['trainable_d']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
