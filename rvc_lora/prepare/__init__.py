"""Dataset preparation (``rvc-lora prepare``): recordings -> an RVC experiment folder.

``run_prepare(cfg)`` runs ingest (decode, high-pass, slice, cut, normalise), pitch, content features,
the manifest / filelist / experiment.json and the faiss index, resumably and optionally sharded over
torchrun ranks; it returns a :class:`PrepareReport`.
"""

from rvc_lora.prepare.pipeline import choose_validation, ingest_settings, resolve_pitch_method, run_prepare
from rvc_lora.prepare.report import PrepareReport
from rvc_lora.prepare.sources import find_audio_files

__all__ = [
    "PrepareReport",
    "choose_validation",
    "find_audio_files",
    "ingest_settings",
    "resolve_pitch_method",
    "run_prepare",
]
