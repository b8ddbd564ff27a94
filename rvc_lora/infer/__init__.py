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
from rvc_lora.infer.streaming import StreamingConverter, StreamSettings, stream_convert

__all__ = [
    "FP16_CONSTANTS",
    "FP32_CONSTANTS",
    "ConvertOptions",
    "Converter",
    "PipelineConstants",
    "StageTimes",
    "StreamSettings",
    "StreamingConverter",
    "read_f0_file",
    "stream_convert",
    "write_audio",
]
