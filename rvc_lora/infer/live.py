"""``rvc-lora live``: streaming conversion from a file or the microphone, to a file or the speakers.

File to file runs block by block exactly as a live stream would (the output is shifted back by the
stream's lag, so it lines up with the input). The microphone and speakers need the optional
``sounddevice`` package.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from rvc_lora.infer.command import add_model_arguments, add_option_arguments, converter_from_args, options_from_args
from rvc_lora.utils import RVCLoraError, set_torch_threads


def add_live_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``rvc-lora live`` on ``parser``."""
    parser.add_argument("--input", help="audio file to stream (default: the microphone, needs sounddevice)")
    parser.add_argument("--output", help="write the converted stream here (.wav / .flac; default: the speakers)")
    add_model_arguments(parser)
    add_option_arguments(parser)
    from rvc_lora.infer.stream_layout import StreamSettings

    default = StreamSettings()
    group = parser.add_argument_group("stream layout (seconds)")
    for flag, text in (("--block", "audio per block (20 ms steps)"), ("--crossfade", "crossfade between blocks"),
                       ("--search", "SOLA offset search (0: the excitation phase already continues)"),
                       ("--context", "past audio the model attends over"),
                       ("--content-context", "past audio HuBERT sees each block"),
                       ("--pitch-context", "past audio the pitch extractor sees each block"),
                       ("--margin", "decoder warm-up, decoded and dropped")):
        value = getattr(default, flag[2:].replace("-", "_"))
        group.add_argument(flag, type=float, default=value, help=f"{text} (default {value:g})")
    parser.add_argument("--seconds", type=float, help="stop the microphone after this long (default: Ctrl-C)")
    parser.add_argument("--mic-rate", type=int, default=48000, help="microphone sample rate (default 48000)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on a busy machine "
                        "1 thread costs a third of the CPU time of 2 per block)")


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: the PortAudio library is missing
        raise RVCLoraError(f"microphone and speaker I/O need the 'sounddevice' package ({exc}); install it with "
                           "`pip install sounddevice`, or stream files with --input IN.wav --output OUT.wav") from None
    return sounddevice


def _settings(args: argparse.Namespace):
    from dataclasses import fields

    from rvc_lora.infer.stream_layout import StreamSettings

    return StreamSettings(**{f.name: getattr(args, f.name) for f in fields(StreamSettings)})


def _report(stream, audio_seconds: float) -> None:
    blocks = np.asarray(stream.stats.block_seconds)
    if blocks.size == 0:
        return
    block = stream.layout.block / 100
    print(f"{audio_seconds:.1f} s of audio in {blocks.size} blocks of {block * 1000:.0f} ms; compute per block: "
          f"median {np.median(blocks) * 1000:.0f} ms, max {blocks.max() * 1000:.0f} ms "
          f"({'keeps up with' if np.percentile(blocks, 95) < block else 'slower than'} real time); "
          f"algorithmic latency {stream.latency * 1000:.0f} ms")


def run_live(args: argparse.Namespace) -> int:
    """Run ``rvc-lora live``."""
    from tqdm import tqdm

    from rvc_lora.audio.io import load_audio
    from rvc_lora.infer.converter import write_audio
    from rvc_lora.infer.streaming import StreamingConverter, stream_convert

    settings = _settings(args)
    options = options_from_args(args)
    if args.threads is not None:
        set_torch_threads(args.threads)
    fmt = None
    if args.output:
        fmt = args.output.rsplit(".", 1)[-1].lower() if "." in args.output else ""
        if fmt not in ("wav", "flac"):
            raise RVCLoraError(f"--output {args.output}: use a .wav or .flac file name")
    sd = _sounddevice() if not (args.input and args.output) else None
    converter = converter_from_args(args)

    if args.input and args.output:
        audio, sr = load_audio(args.input)
        with tqdm(total=audio.shape[0], unit="sample", unit_scale=True, desc="live", disable=None,
                  file=sys.stderr) as bar:
            out, out_sr, stream = stream_convert(converter, audio, sr, options, settings, progress=bar.update)
        write_audio(args.output, out, out_sr, fmt)
        _report(stream, audio.shape[0] / sr)
        print(f"wrote {args.output}")
        return 0

    if args.input:  # file -> speakers, paced by the output device
        audio, sr = load_audio(args.input)
        stream = StreamingConverter(converter, options, settings, input_rate=sr)
        step = stream.block_samples
        with sd.OutputStream(samplerate=stream.output_rate, channels=1, dtype="float32") as speakers:
            for i in range(0, audio.shape[0], step):
                speakers.write(stream.process(audio[i:i + step])[:, None])
            speakers.write(stream.flush()[:, None])
        _report(stream, audio.shape[0] / sr)
        return 0

    stream = StreamingConverter(converter, options, settings, input_rate=args.mic_rate)
    step = stream.block_samples
    recorded = []
    start = time.monotonic()
    print(f"listening (block {settings.block:g} s, latency {stream.latency * 1000:.0f} ms); Ctrl-C to stop",
          file=sys.stderr)
    try:
        with sd.InputStream(samplerate=args.mic_rate, channels=1, dtype="float32", blocksize=step) as mic, \
                (sd.OutputStream(samplerate=stream.output_rate, channels=1, dtype="float32")
                 if not args.output else _NoSpeakers()) as speakers:
            while args.seconds is None or time.monotonic() - start < args.seconds:
                data, _overflowed = mic.read(step)
                out = stream.process(data[:, 0])
                speakers.write(out[:, None])
                recorded.append(out)
    except KeyboardInterrupt:
        pass
    recorded.append(stream.flush())
    if args.output:
        write_audio(args.output, np.concatenate(recorded), stream.output_rate, fmt)
        print(f"wrote {args.output}")
    _report(stream, time.monotonic() - start)
    return 0


class _NoSpeakers:
    """Stands in for the output device when recording to a file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, data: np.ndarray) -> None:
        return None
