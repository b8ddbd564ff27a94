"""Audio ingestion: decoding, resampling, filtering, silence slicing, normalisation and checks."""

from rvc_lora.audio.checks import inspect_audio
from rvc_lora.audio.filters import highpass
from rvc_lora.audio.io import AudioError, AudioInfo, load_audio, probe_audio, write_wav
from rvc_lora.audio.resample import resample
from rvc_lora.audio.slicer import Slicer, cut_pieces, normalize_piece, slice_ranges

__all__ = [
    "AudioError",
    "AudioInfo",
    "Slicer",
    "cut_pieces",
    "highpass",
    "inspect_audio",
    "load_audio",
    "normalize_piece",
    "probe_audio",
    "resample",
    "slice_ranges",
    "write_wav",
]
