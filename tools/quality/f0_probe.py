"""Does a base model follow F0? Two measurements of an RVC v1 32 kHz model from the quality benchmark:

1. whole conversions: the median F0 (pm) of a source sentence converted at key 0 and key +12, against the
   source's own median (a model that follows F0 moves by an octave between the two);
2. the decoder alone, on a latent held constant over 200 frames (no frame-to-frame change) at F0 150 Hz:
   the level of the F0's odd harmonics (150, 450 Hz) against the 100 Hz teeth that are not F0 multiples
   (100, 200, 400, 500 Hz: the frame rate, 32 kHz / hop 320) and a bin between them (127 Hz), in dB.

    python tools/quality/f0_probe.py MODEL.pth [MODEL.pth ...] [--work-dir DIR]

The work folder (default ``~/.cache/rvc-lora/bench_quality/full``) supplies the content encoder and the
source sentence. Prints one block per model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality.metrics import Scorer  # noqa: E402
from quality.world import SAMPLE_RATE  # noqa: E402

from rvc_lora.checkpoint import load_rvc  # noqa: E402
from rvc_lora.infer import Converter  # noqa: E402

FRAMES = 200
PROBE_F0 = 150.0


def median_f0(scorer: Scorer, audio: np.ndarray, sr: int) -> float:
    f0 = scorer.f0(audio, sr)
    return float(np.median(f0[f0 > 0])) if (f0 > 0).any() else 0.0


def decode(model: torch.nn.Module, z: torch.Tensor, f0: float) -> np.ndarray:
    """The decoder's output [T * upp] for latent ``z`` [1, inter, T] at a constant ``f0`` (Hz), speaker row 0,
    with the same noise in the harmonic source on every call (seed 1)."""
    g = model.emb_g(torch.tensor([0])).unsqueeze(-1)
    torch.manual_seed(1)
    with torch.inference_mode():
        return model.dec(z, torch.full((1, z.shape[-1]), f0), g=g).flatten().numpy()


def decoder_levels(model_path: Path) -> dict[float, float]:
    """Frequency (Hz) -> level (dB) of the decoder's output for a constant latent at ``PROBE_F0``."""
    model = load_rvc(model_path).model.eval()
    channels = model.dec.conv_pre.in_channels
    torch.manual_seed(0)
    z = (torch.randn(1, channels, 1) * 0.5).expand(1, channels, FRAMES).contiguous()
    y = decode(model, z, PROBE_F0)
    y = y[len(y) // 4: -len(y) // 4]  # away from the edges
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)
    return {f: float(20 * np.log10(spectrum[np.abs(freqs - f) < 3].max() + 1e-9))
            for f in (100.0, 127.0, 150.0, 200.0, 400.0, 450.0, 500.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "rvc-lora" / "bench_quality" / "full")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scorer = Scorer("pm", dnsmos=False)
    source = sorted((args.work_dir / "corpus" / "b01_m1_us" / "source").glob("*.wav"))[0]
    audio, sr = sf.read(str(source), dtype="float32")
    print(f"source {source.name}: median F0 {median_f0(scorer, audio, sr):.1f} Hz")
    for path in args.models:
        converter = Converter(path, args.work_dir / "encoder" / "phonetic.pt", device="cpu", f0_method="pm",
                              content_kind="torchscript")
        keys = {key: median_f0(scorer, *converter.convert(audio, sr, pitch=key, seed=0)) for key in (0, 12)}
        levels = decoder_levels(path)
        print(f"{path}:\n  whole conversion, median F0: key 0 {keys[0]:.1f} Hz, key +12 {keys[12]:.1f} Hz\n"
              f"  constant latent at F0 {PROBE_F0:.0f} Hz: F0 harmonics 150 / 450 Hz "
              f"{levels[150.0]:.0f} / {levels[450.0]:.0f} dB; 100 Hz teeth 100 / 200 / 400 / 500 Hz "
              + " / ".join(f"{levels[f]:.0f}" for f in (100.0, 200.0, 400.0, 500.0))
              + f" dB; between (127 Hz) {levels[127.0]:.0f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
