"""Per-frame features: pitch extractors (``pitch``), RMVPE (``rmvpe``), content encoders (``content``)."""

from rvc_lora.features.pitch import (
    METHODS,
    PitchExtractor,
    coarse_pitch,
    default_pitch_method,
    get_pitch_extractor,
    shift_pitch,
)

__all__ = [
    "METHODS",
    "PitchExtractor",
    "coarse_pitch",
    "default_pitch_method",
    "get_pitch_extractor",
    "shift_pitch",
]
