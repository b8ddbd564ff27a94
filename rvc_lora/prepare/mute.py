"""RVC's silence piece in an experiment: 3 s of digital silence, its pitch files and its manifest row.

RVC appends two filelist lines for ``logs/mute`` (zeros at the model rate, the content features of those
zeros, coarse pitch 1, f0 0 Hz) with the experiment's speaker, so the model learns silence. Here the piece
is ``mute`` inside the experiment; its content features are computed by the experiment's own content encoder
in the content stage, like any piece. It is kept out of validation and out of the retrieval index (RVC's
index covers the experiment's own features only).
"""

from __future__ import annotations

import numpy as np

from rvc_lora.data.experiment import MUTE_NAME, MUTE_SECONDS, MUTE_STATUS, ExperimentLayout, ManifestRow
from rvc_lora.features.pitch import HOP
from rvc_lora.features.pitch import SAMPLE_RATE as RATE_16K
from rvc_lora.utils import atomic_write

from .features import save_npy

__all__ = ["mute_row", "write_mute_piece"]


def _write_silence(path, sample_rate: int) -> None:
    """3 s of float32 zeros at ``sample_rate``, unless such a file is already there."""
    import soundfile as sf

    frames = int(MUTE_SECONDS * sample_rate)
    try:
        info = sf.info(str(path))
        if (info.samplerate, info.frames, info.channels) == (sample_rate, frames, 1):
            return
    except (RuntimeError, OSError):
        pass  # missing or unreadable: write it
    with atomic_write(path) as tmp:
        sf.write(str(tmp), np.zeros(frames, dtype=np.float32), sample_rate, subtype="FLOAT", format="WAV")


def write_mute_piece(layout: ExperimentLayout, sample_rate: int, f0: bool) -> None:
    """Write the silence piece's audio (model rate and 16 kHz) and, for pitch models, its f0 files.

    Files already present and right are kept (resumable). The content features are left to the content
    stage (the piece's 16 kHz audio is its input).
    """
    _write_silence(layout.gt_wav(MUTE_NAME), sample_rate)
    _write_silence(layout.wav16k(MUTE_NAME), RATE_16K)
    if f0:
        frames = int(MUTE_SECONDS * RATE_16K) // HOP
        if not (layout.f0_hz(MUTE_NAME).is_file() and layout.f0_coarse(MUTE_NAME).is_file()):
            save_npy(layout.f0_hz(MUTE_NAME), np.zeros(frames, dtype=np.float64))
            save_npy(layout.f0_coarse(MUTE_NAME), np.ones(frames, dtype=np.int64))


def mute_row(speaker_id: int) -> ManifestRow:
    """The manifest row of the silence piece (status ``mute``, always in the training split)."""
    return ManifestRow(name=MUTE_NAME, source="(silence)", end_s=MUTE_SECONDS, duration_s=MUTE_SECONDS,
                       speaker_id=speaker_id, status=MUTE_STATUS, split="train")
