"""What every benchmark script shares: the allocator choice (tuned like the rvc-lora command, or not)."""

from __future__ import annotations

import argparse
import os

from rvc_lora.utils import tune_allocator


def add_allocator_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default allocator settings (the rvc-lora command tunes them)")


def setup_allocator(args: argparse.Namespace) -> str:
    """Apply the choice (also for worker subprocesses, through the environment); 'tuned' or 'default'."""
    if args.no_malloc_tuning:
        os.environ["RVC_LORA_NO_MALLOC_TUNING"] = "1"
    return "tuned" if tune_allocator() else "default"
