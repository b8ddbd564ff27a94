"""The ``rvc-lora`` command: parses arguments, calls the library, prints results and exits.

Subcommands that take Hydra configuration (``prepare``, ``train``) receive their remaining
arguments as Hydra overrides (``key=value``, ``recipe=NAME``, ``lora=hq``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rvc_lora.utils import RVCLoraError


def _format_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def cmd_inspect(args: argparse.Namespace) -> int:
    """Describe an RVC model file or an adapter file."""
    path = Path(args.file)
    if path.suffix == ".safetensors":
        from rvc_lora.generator_lora import describe_adapter

        print(describe_adapter(path))
        return 0
    from rvc_lora.checkpoint import load_rvc, parameter_counts

    ckpt = load_rvc(path, strict=not args.partial)
    print(f"file:        {path}")
    print(f"format:      {ckpt.format} ({ckpt.kind})")
    print(f"version:     {ckpt.version}")
    if ckpt.kind == "generator":
        print(f"sample rate: {ckpt.sample_rate} Hz")
        print(f"f0:          {'yes (pitch-guided NSF generator)' if ckpt.f0 else 'no'}")
        print(f"speakers:    {ckpt.n_speakers}")
    print(f"dtype:       {str(ckpt.dtype).replace('torch.', '')}")
    if ckpt.info:
        print(f"info:        {ckpt.info}")
    counts = parameter_counts(ckpt.model)
    print("parameters:")
    for name, count in counts.items():
        print(f"  {name:<16}{_format_count(count):>10}")
    print(f"  {'total':<16}{_format_count(sum(counts.values())):>10}")
    if ckpt.missing_keys or ckpt.unexpected_keys:
        print(f"partial load: {len(ckpt.missing_keys)} missing, {len(ckpt.unexpected_keys)} unexpected keys")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge adapters into a base and write a standard RVC model."""
    from rvc_lora.merge import merge_adapters, parse_adapter_spec

    adapters = [parse_adapter_spec(spec) for spec in args.adapter]
    out = merge_adapters(args.base, adapters, args.out, dtype=args.dtype, force=args.force)
    size = Path(out).stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB): {args.base} + " + ", ".join(f"{p}:{s:g}" for p, s in adapters))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Turn a fully fine-tuned RVC model into an adapter over its base."""
    from rvc_lora.merge import extract_adapter

    rows = extract_adapter(args.base, args.tuned, args.out, rank=args.rank, energy=args.energy,
                           diff_only=args.diff_only, targets=args.targets, dtype=args.dtype)
    print(f"{'layer':<30}{'stored':>8}{'rank':>6}{'rel. error':>12}{'bytes':>12}")
    for row in rows:
        print(f"{row.module:<30}{row.stored_as:>8}{row.rank:>6}{row.rel_error:>12.2e}{row.bytes:>12,}")
    total = sum(r.bytes for r in rows)
    print(f"{'total':<30}{'':>8}{'':>6}{'':>12}{total:>12,}")
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rvc-lora",
        description="Train LoRA speaker adapters for RVC and merge them into standard RVC models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="describe an RVC .pth file or an adapter .safetensors file")
    p.add_argument("file")
    p.add_argument("--partial", action="store_true", help="load even if keys are missing or unexpected")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("merge", help="merge adapters into a base, writing a standard RVC model")
    p.add_argument("--base", required=True, help="base RVC model (small model or pretrained G)")
    p.add_argument("--adapter", required=True, action="append", metavar="FILE[:STRENGTH]",
                   help="adapter .safetensors, optionally with a strength (default 1); repeatable")
    p.add_argument("--out", required=True, help="merged RVC model to write (.pth)")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--force", action="store_true", help="apply adapters made for a different base")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("extract", help="extract an adapter from a fully fine-tuned RVC model")
    p.add_argument("--base", required=True, help="the base the model was fine-tuned from")
    p.add_argument("--tuned", required=True, help="the fine-tuned RVC model")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--rank", type=int, help="rank of every layer")
    group.add_argument("--energy", type=float, help="keep this share of each delta's energy, e.g. 0.99")
    group.add_argument("--diff-only", action="store_true", help="store full deltas instead of factors")
    p.add_argument("--targets", nargs="+", help="generator layer globs (default: ups.* resblocks.*)")
    p.add_argument("--out", required=True, help="adapter .safetensors to write")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "fp32", "bf16"])
    p.set_defaults(func=cmd_extract)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RVCLoraError as exc:
        print(f"rvc-lora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rvc-lora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
