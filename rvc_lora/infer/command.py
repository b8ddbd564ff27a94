"""``rvc-lora convert``: argument definitions and the batch driver (per-file errors, summary, exit code)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rvc_lora.infer.precision import PRECISIONS
from rvc_lora.utils import RVCLoraError, StorageError, check_writable_folder

if TYPE_CHECKING:
    import numpy as np

    from rvc_lora.infer.converter import Converter
    from rvc_lora.infer.pipeline import ConvertOptions

OUTPUT_SUFFIXES = ("wav", "flac")
_EXTRA_AUDIO_SUFFIXES = {"wav", "flac", "ogg", "oga", "opus", "mp3", "aif", "aiff", "aifc", "au", "snd", "caf",
                         "w64", "rf64", "wv"}


def audio_suffixes() -> set[str]:
    """File suffixes (lower case, no dot) treated as audio when scanning folders."""
    try:
        import soundfile as sf

        return {k.lower() for k in sf.available_formats()} | _EXTRA_AUDIO_SUFFIXES
    except Exception:  # pragma: no cover - soundfile is a dependency
        return set(_EXTRA_AUDIO_SUFFIXES)


def add_model_arguments(parser: argparse.ArgumentParser, adapters: bool = True) -> None:
    """Register what loads a :class:`Converter` (model, content model, pitch, index, device) on ``parser``."""
    parser.add_argument("--model", required=True, help="RVC model (.pth): RVC / Applio / rvc-lora files")
    if adapters:
        parser.add_argument("--adapter", action="append", default=[], metavar="FILE[:STRENGTH]",
                            help="LoRA adapter merged at load, optional strength (default 1); repeatable")
        parser.add_argument("--force", action="store_true", help="apply adapters made for a different base")
    parser.add_argument("--hubert", "--content-model", dest="hubert", metavar="PATH",
                        help="content model: RVC's hubert_base.pt, a HF HuBERT folder or a TorchScript content "
                             "encoder (16 kHz [1, N] -> [frames, dim] at 50 Hz; detected) "
                             "(default: the file from `rvc-lora assets download hubert`)")
    parser.add_argument("--f0-method", help="pitch method: rmvpe, fcpe, crepe, crepe-tiny, harvest, dio, pm, pyin "
                                            "(default rmvpe if --rmvpe is given, else fcpe)")
    parser.add_argument("--rmvpe", help="RVC's rmvpe.pt (for --f0-method rmvpe)")
    parser.add_argument("--index", help="faiss retrieval index (.index) built for this model")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto = fp16 on CUDA, fp32 elsewhere; fp16 needs CUDA; bf16 runs the generator's "
                             "stages in bfloat16, mixed all but the last (fast only where the processor has "
                             "bf16: AVX-512 BF16 / AMX / CUDA); see the README's speed section")


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the per-conversion options (pitch, index rate, protect, loudness mix, ...) on ``parser``."""
    parser.add_argument("--sample-rate", type=int, help="output sample rate in Hz (default: the model's)")
    parser.add_argument("--pitch", "--key", dest="pitch", type=float, default=0.0, metavar="SEMITONES",
                        help="transpose by this many semitones (e.g. 12 = one octave up)")
    parser.add_argument("--index-rate", type=float, help="share of retrieved features, 0..1 (default 0.75)")
    parser.add_argument("--protect", type=float, default=0.33,
                        help="protect unvoiced consonants from the index, 0..0.5 (>= 0.5 disables; default 0.33)")
    parser.add_argument("--rms-mix", type=float, default=0.25,
                        help="loudness envelope: 1 keeps the output's, 0 copies the input's (default 0.25)")
    parser.add_argument("--speaker-id", type=int, default=0, help="speaker row of multi-speaker models")
    parser.add_argument("--seed", type=int, help="seed the synthesizer's noise for reproducible output")


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``rvc-lora convert`` on ``parser``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files and/or folders to convert")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True,
                        help="output file (one input) or folder (several inputs or a folder input)")
    parser.add_argument("--format", choices=OUTPUT_SUFFIXES, help="output format (default: --out suffix, else wav)")
    add_option_arguments(parser)
    parser.add_argument("--f0-file", help="f0 curve file, lines 'seconds,Hz', replacing the extracted f0")


def options_from_args(args: argparse.Namespace, f0_curve: np.ndarray | None = None) -> ConvertOptions:
    """The :class:`ConvertOptions` of parsed option arguments (checked)."""
    from rvc_lora.infer.pipeline import ConvertOptions

    options = ConvertOptions(
        pitch=args.pitch,
        f0_curve=f0_curve,
        index_rate=0.75 if args.index_rate is None else args.index_rate,
        protect=args.protect,
        rms_mix=args.rms_mix,
        speaker_id=args.speaker_id,
        sample_rate=args.sample_rate,
        seed=args.seed,
    )
    options.validate()
    return options


def converter_from_args(args: argparse.Namespace, **overrides) -> Converter:
    """A :class:`Converter` from parsed model arguments (``overrides`` replace constructor arguments)."""
    from rvc_lora.infer.converter import Converter
    from rvc_lora.merge import parse_adapter_spec

    kwargs = dict(adapters=[parse_adapter_spec(a) for a in getattr(args, "adapter", [])], index=args.index,
                  device=args.device, precision=args.precision,
                  f0_method=args.f0_method, rmvpe=args.rmvpe, force=getattr(args, "force", False))
    kwargs.update(overrides)
    converter = Converter(args.model, _hubert_path(args.hubert), **kwargs)
    if converter.note:
        print(f"rvc-lora: note: {converter.note}", file=sys.stderr)
    return converter


@dataclass
class Job:
    """One conversion: input file -> output file."""

    source: Path
    target: Path


def _hubert_path(arg: str | None) -> str:
    if arg:
        return arg
    from rvc_lora.assets import asset_path

    cached = asset_path("hubert")
    if cached is None:
        raise RVCLoraError(
            "no content model (HuBERT) given: pass --hubert PATH to RVC's hubert_base.pt, "
            "or download it once with `rvc-lora assets download hubert`"
        )
    return str(cached)


def plan_jobs(inputs: list[str], out: str, fmt: str | None) -> tuple[list[Job], list[tuple[Path, str]], str]:
    """Expand inputs (files, folders scanned recursively) into jobs; returns (jobs, missing, format).

    With a single file input and an ``--out`` with a file suffix (.wav / .flac) that is not an existing
    folder, ``--out`` is the file; otherwise it is a folder receiving ``<relative path>.<format>``.
    """
    out_path = Path(out)
    suffixes = audio_suffixes()
    sources: list[tuple[Path, Path]] = []
    missing: list[tuple[Path, str]] = []
    any_folder = False
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            any_folder = True
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in suffixes)
            if not found:
                missing.append((path, "folder contains no audio files"))
            prefix = Path(path.name) if len(inputs) > 1 else Path()
            sources += [(p, prefix / p.relative_to(path)) for p in found]
        elif path.exists():
            sources.append((path, Path(path.name)))
        else:
            missing.append((path, "file not found"))
    suffix = out_path.suffix.lower().lstrip(".")
    single_file = len(inputs) == 1 and not any_folder and not out_path.is_dir() and bool(suffix)
    if single_file:
        if suffix not in OUTPUT_SUFFIXES:
            raise RVCLoraError(f"--out {out}: unsupported output suffix .{suffix} (use .wav or .flac, or give a "
                               "folder)")
        if fmt and fmt != suffix:
            raise RVCLoraError(f"--out {out} does not match --format {fmt}")
        fmt = suffix
    fmt = fmt or "wav"
    several = "several inputs" if len(inputs) > 1 else "a folder"
    if out_path.exists() and not out_path.is_dir() and not single_file:
        raise RVCLoraError(f"--out {out}: must be a folder when converting {several}")
    if not single_file and not out_path.exists() and suffix in OUTPUT_SUFFIXES:
        raise RVCLoraError(f"--out {out} looks like a file name, but converting {several} writes a folder of "
                           "files: give a folder name")
    jobs: list[Job] = []
    used: set[Path] = set()
    for source, rel in sources:
        if single_file:
            target = out_path
        else:
            target = out_path / rel.with_suffix(f".{fmt}")
            stem, n = target.stem, 1
            while target in used:
                n += 1
                target = target.with_name(f"{stem}-{n}.{fmt}")
        used.add(target)
        if target.resolve() == source.resolve():
            raise RVCLoraError(f"{source}: output would overwrite the input; choose another --out")
        jobs.append(Job(source, target))
    return jobs, missing, fmt


def _file_failure(source: Path, exc: Exception) -> str:
    """One line for a failed input: RVCLoraError messages as they are, others named and described."""
    if isinstance(exc, OSError):
        exc = StorageError.from_os_error(exc, writing=False)
    if isinstance(exc, RVCLoraError):
        text = str(exc)
        return text if text.startswith(str(source)) else f"{source}: {text}"
    lines = str(exc).strip().splitlines()
    return f"{source}: {type(exc).__name__}: {lines[0] if lines else 'no message'}"


def run_convert(args: argparse.Namespace) -> int:
    """Run ``rvc-lora convert``; returns 0 if every input converted, 1 if any failed.

    Setup problems (model, adapters, content model, index, options) raise RVCLoraError.
    """
    from tqdm import tqdm

    from rvc_lora.infer.pipeline import read_f0_file

    jobs, failures, fmt = plan_jobs(list(args.inputs), args.out, args.format)
    options = options_from_args(args, read_f0_file(args.f0_file) if args.f0_file else None)
    converter = None
    if jobs:  # a folder that cannot take the outputs fails now, not after the models are loaded
        check_writable_folder(jobs[0].target.parent)
        converter = converter_from_args(args)
        if not 0 <= options.speaker_id < converter.n_speakers:
            raise RVCLoraError(f"--speaker-id {options.speaker_id}: {args.model} has {converter.n_speakers} "
                               f"speaker(s) (valid ids 0..{converter.n_speakers - 1})")
    done = 0
    bar = tqdm(jobs, unit="file", desc="convert", disable=None, file=sys.stderr)
    for position, job in enumerate(bar):
        try:
            converter.convert_file(job.source, job.target, options, fmt=fmt)
            done += 1
        except (RVCLoraError, OSError, RuntimeError, ValueError, MemoryError) as exc:
            message = _file_failure(job.source, exc)
            failures.append((job.source, message.removeprefix(f"{job.source}: ")))
            bar.write(f"rvc-lora: failed: {message}", file=sys.stderr)
            if isinstance(exc, StorageError):  # writing the output failed (full, refused): so would the rest
                rest = len(jobs) - position - 1
                if rest:
                    failures.append((Path(args.out), f"{rest} more input(s) not converted: stopped after this error"))
                break
    bar.close()
    target = jobs[0].target if len(jobs) == 1 else Path(args.out)
    print(f"converted {done} file(s) -> {target}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m rvc_lora.infer.command``), same behaviour as the subcommand."""
    parser = argparse.ArgumentParser(prog="rvc-lora convert", description="Convert voices with an RVC model.")
    add_convert_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_convert(args)
    except Exception as exc:  # noqa: BLE001 - the same one-line report as ``rvc-lora convert``
        from rvc_lora.failures import debug_requested, report_failure

        return report_failure(exc, debug_requested())


if __name__ == "__main__":
    sys.exit(main())
