"""Voice conversion with RVC semantics: the pipeline, the ``Converter`` class and ``rvc-lora convert``.

The names below load their module (and torch) on first use, so the command line starts without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "Converter": "converter", "write_audio": "converter",
    "FP16_CONSTANTS": "pipeline", "FP32_CONSTANTS": "pipeline", "ConvertOptions": "pipeline",
    "PipelineConstants": "pipeline", "StageTimes": "pipeline", "read_f0_file": "pipeline",
    "StreamingConverter": "streaming", "StreamSettings": "stream_layout", "stream_convert": "streaming",
}
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

if TYPE_CHECKING:
    from rvc_lora.infer.converter import Converter, write_audio
    from rvc_lora.infer.pipeline import (
        FP16_CONSTANTS,
        FP32_CONSTANTS,
        ConvertOptions,
        PipelineConstants,
        StageTimes,
        read_f0_file,
    )
    from rvc_lora.infer.stream_layout import StreamSettings
    from rvc_lora.infer.streaming import StreamingConverter, stream_convert


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
