"""Voice conversion with RVC semantics: the pipeline, the ``Converter`` class and ``rvc-lora convert``."""

from rvc_lora.infer.converter import Converter, write_audio
from rvc_lora.infer.pipeline import (
    FP16_CONSTANTS,
    FP32_CONSTANTS,
    ConvertOptions,
    PipelineConstants,
    StageTimes,
    read_f0_file,
)

__all__ = [
    "FP16_CONSTANTS",
    "FP32_CONSTANTS",
    "ConvertOptions",
    "Converter",
    "PipelineConstants",
    "StageTimes",
    "read_f0_file",
    "write_audio",
]
