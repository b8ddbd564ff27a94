"""Measure adapter sizes on a full-size RVC model: trainable parameters and the fp16 file on disk.

Variants (rank and alpha as given, default 8): the default generator targets (``ups.*``, ``resblocks.*``),
plus the flow (``lora.flow``), plus the text encoder (``lora.enc_p``), plus a trained speaker row
(``lora.train_speaker_embedding``: 256 trainable numbers, stored as the full ``emb_g.diff`` table), and all
of them. Each file is written by the trainer's own writer. Prints a markdown table.

    python tools/adapter_sizes.py [--version v2] [--sample-rate 40000] [--rank 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from rvc_lora.generator_lora import SynthesizerLoRA
from rvc_lora.lora import LoRAConfig
from rvc_lora.models import build_synthesizer
from rvc_lora.train.trainable import SpeakerRowDelta

VARIANTS = {  # name -> (flow, enc_p, speaker row)
    "default (ups + resblocks)": (False, False, False),
    "+ flow": (True, False, False),
    "+ enc_p": (False, True, False),
    "+ speaker row": (False, False, True),
    "+ flow + enc_p + speaker row": (True, True, True),
}


def measure(version: str, sample_rate: int, rank: int, flow: bool, enc_p: bool, speaker: bool,
            folder: Path) -> tuple[int, int]:
    """(trainable parameters, fp16 adapter file bytes) of one variant."""
    synth = build_synthesizer(version, sample_rate, f0=True)
    host = SynthesizerLoRA(synth, LoRAConfig(rank=rank, alpha=rank), flow=flow, enc_p=enc_p)
    params = sum(p.numel() for p in host.lora_parameters())
    row = None
    if speaker:
        delta = SpeakerRowDelta(synth.emb_g, 0)
        params += delta.delta.numel()
        row = (delta.row, delta.diff())
    path = host.save_adapter(folder / "adapter.safetensors", speaker_row=row)
    return params, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="v2")
    parser.add_argument("--sample-rate", type=int, default=40000)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"RVC {args.version} {args.sample_rate} Hz, full size, LoRA rank {args.rank}, fp16 files\n")
    print("| adapter | trainable params | vs default | file (fp16) |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for name, (flow, enc_p, speaker) in VARIANTS.items():
            params, size = measure(args.version, args.sample_rate, args.rank, flow, enc_p, speaker, Path(tmp))
            base = base or params
            print(f"| {name} | {params:,} | {params / base - 1:+.1%} | {size / 1e6:.2f} MB ({size:,} B) |")


if __name__ == "__main__":
    main()
