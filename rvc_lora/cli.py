"""The ``rvc-lora`` command: parses arguments, calls the library, prints results and exits.

Subcommands that take Hydra configuration (``prepare``, ``train``) receive their remaining
arguments as Hydra overrides (``key=value``, ``recipe=NAME``, ``lora=hq``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rvc_lora.failures import EXIT_CODES, debug_requested, one_line_thread_failures, report_failure
from rvc_lora.utils import RVCLoraError, tune_allocator


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

    adapters = [parse_adapter_spec(spec) for spec in args.adapter]  # strengths are checked by merge_adapters
    out = merge_adapters(args.base, adapters, args.out, dtype=args.dtype, force=args.force)
    size = Path(out).stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB): {args.base} + " + ", ".join(f"{p}:{s:g}" for p, s in adapters))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Turn a fully fine-tuned RVC model into an adapter over its base."""
    from rvc_lora.merge import extract_adapter

    rows = extract_adapter(args.base, args.tuned, args.out, rank=args.rank, energy=args.energy,
                           diff_only=args.diff_only, targets=args.targets, dtype=args.dtype,
                           progress=sys.stderr.isatty())
    print(f"{'layer':<30}{'stored':>8}{'rank':>6}{'rel. error':>12}{'bytes':>12}")
    for row in rows:
        rank = "-" if row.stored_as == "diff" else str(row.rank)
        print(f"{row.module:<30}{row.stored_as:>8}{rank:>6}{row.rel_error:>12.2e}{row.bytes:>12,}")
    total = sum(r.bytes for r in rows)
    print(f"{'total':<30}{'':>8}{'':>6}{'':>12}{total:>12,}")
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    """List or download named assets (HuBERT, RMVPE, pretrained bases) into the cache."""
    from rvc_lora.assets import asset_path, default_cache_dir, download_asset, list_assets

    if args.action == "list":
        print(f"cache: {args.cache_dir or default_cache_dir()}")
        for asset in list_assets():
            cached = asset_path(asset.name, args.cache_dir)
            print(f"  {asset.name:<24}{'cached' if cached else '':<8}{asset.description}")
        return 0
    if not args.names:
        raise RVCLoraError("name at least one asset to download (see `rvc-lora assets list`)")
    for name in args.names:
        path = download_asset(name, cache_dir=args.cache_dir, force=args.force)
        print(f"{name}: {path}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Turn a folder of recordings into an experiment folder (Hydra overrides)."""
    from rvc_lora.config import load_config, prepare_assets, resolve_asset_references
    from rvc_lora.prepare import run_prepare

    cfg = load_config(args.overrides)
    resolve_asset_references(cfg, prepare_assets(cfg))
    report = run_prepare(cfg)
    if report.rank == 0:  # under torchrun, other ranks only hold their share
        print(report.format_table())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a speaker adapter from a recipe (Hydra overrides)."""
    from rvc_lora.config import TRAIN_ASSETS, load_config, resolve_asset_references
    from rvc_lora.train import run_training

    cfg = load_config(args.overrides)
    resolve_asset_references(cfg, TRAIN_ASSETS)

    def announce(step: int, checkpoint: Path) -> None:
        print(f"resuming from step {step} (checkpoint {checkpoint})", flush=True)

    result = run_training(cfg, on_resume=announce)
    if result.interrupted:
        print(f"interrupted at step {result.steps}: checkpoint saved in {result.run_dir}; "
              "re-run the same command to resume")
        return 130
    print(f"trained {result.steps} steps ({result.stop_reason}); run folder: {result.run_dir}")
    for label, path in (("adapter", result.adapter_path), ("best adapter", result.best_adapter_path),
                        ("merged RVC model", result.merged_path)):
        if path:
            print(f"  {label + ':':<18}{path}")
    for path in result.base_paths:
        print(f"  {'full model:':<18}{path}")
    for path in result.index_paths:
        print(f"  {'index:':<18}{path}")
    print(f"  {'TensorBoard:':<18}rvc-lora tensorboard {result.run_dir}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the composed configuration (defaults + recipe + overrides) as YAML."""
    from omegaconf import OmegaConf

    from rvc_lora.config import load_config

    print(OmegaConf.to_yaml(load_config(args.overrides)), end="")
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    """Serve a run's TensorBoard logs until Ctrl-C."""
    from rvc_lora.train import launch_tensorboard

    logdir = Path(args.run_dir)
    if not logdir.exists():
        raise RVCLoraError(f"{logdir}: run folder not found")
    process = launch_tensorboard(logdir, port=args.port, host=args.host)
    print(f"TensorBoard for {logdir}: http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    try:
        return process.wait()
    finally:
        process.terminate()


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error (also: RVC_LORA_DEBUG=1)")
    parser = argparse.ArgumentParser(
        prog="rvc-lora",
        description="Train LoRA speaker adapters for RVC and merge them into standard RVC models.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[debug],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:  # --debug also after the command name
        return sub.add_parser(name, parents=[debug], **kwargs)

    p = command("inspect", help="describe an RVC .pth file or an adapter .safetensors file")
    p.add_argument("file")
    p.add_argument("--partial", action="store_true", help="load even if keys are missing or unexpected")
    p.set_defaults(func=cmd_inspect)

    p = command("prepare", help="prepare a folder of recordings for training (Hydra overrides)",
                       epilog="Keys: see `rvc-lora config` and conf/data, conf/pitch, conf/content.")
    p.add_argument("overrides", nargs="*", help="e.g. recipe=NAME data.input_dir=... pitch.method=fcpe")
    p.set_defaults(func=cmd_prepare)

    p = command("train", help="train a speaker adapter (Hydra overrides)",
                       epilog="Keys: see `rvc-lora config` and conf/trainer, conf/lora, conf/optim, conf/model.")
    p.add_argument("overrides", nargs="*", help="e.g. recipe=NAME trainer.max_steps=2000 lora=hq")
    p.set_defaults(func=cmd_train)

    p = command("config", help="print the composed configuration (Hydra overrides, recipes)")
    p.add_argument("overrides", nargs="*", help="e.g. recipe=NAME lora=hq")
    p.set_defaults(func=cmd_config)

    p = command("tensorboard", help="show a run's TensorBoard logs")
    p.add_argument("run_dir")
    p.add_argument("--port", type=int, default=6006)
    p.add_argument("--host", default="localhost", help="interface to listen on (0.0.0.0 for all)")
    p.set_defaults(func=cmd_tensorboard)

    p = command("assets", help="list or download HuBERT, RMVPE and pretrained bases")
    p.add_argument("action", choices=["list", "download"])
    p.add_argument("names", nargs="*", help="asset names, e.g. hubert rmvpe pretrained-v2-f0G40k")
    p.add_argument("--cache-dir", help="default: $RVC_LORA_HOME/assets or ~/.cache/rvc-lora/assets")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=cmd_assets)

    from rvc_lora.infer.command import add_convert_arguments, run_convert

    p = command("convert", help="convert audio with an RVC model (optionally plus adapters)")
    add_convert_arguments(p)
    p.set_defaults(func=run_convert)

    p = command("merge", help="merge adapters into a base, writing a standard RVC model")
    p.add_argument("--base", required=True, help="base RVC model (small model or pretrained G)")
    p.add_argument("--adapter", required=True, action="append", metavar="FILE[:STRENGTH]",
                   help="adapter .safetensors, optionally with a strength (default 1); repeatable")
    p.add_argument("--out", required=True, help="merged RVC model to write (.pth)")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--force", action="store_true", help="apply adapters made for a different base")
    p.set_defaults(func=cmd_merge)

    p = command("extract", help="extract an adapter from a fully fine-tuned RVC model")
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
    tune_allocator()
    one_line_thread_failures(debug_requested(args))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("rvc-lora: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line (a traceback with --debug)
        return report_failure(exc, debug_requested(args))


if __name__ == "__main__":
    sys.exit(main())
