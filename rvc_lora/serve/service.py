"""What a server holds: the conversion engine (model, workers, queue), the adapter registry, the model facts."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from rvc_lora.features.pitch import METHODS
from rvc_lora.infer.converter import Converter
from rvc_lora.serve.engine import Engine
from rvc_lora.serve.options import ModelInfo
from rvc_lora.serve.registry import AdapterRegistry


def model_info(converter: Converter) -> ModelInfo:
    """The facts requests are checked against, read from a loaded Converter."""
    methods = tuple(m for m in METHODS if m != "rmvpe" or converter.rmvpe)
    return ModelInfo(name=converter.model_path.name, version=converter.version, sample_rate=converter.sample_rate,
                     f0=converter.f0, n_speakers=converter.n_speakers, has_index=converter.index is not None,
                     f0_methods=methods, default_f0_method=converter.f0_method.lower())


@dataclass(frozen=True)
class ServeLimits:
    """Request limits and switches (see ``rvc-lora serve --help``)."""

    max_upload_bytes: int = 50 * 1024 * 1024
    max_audio_seconds: float = 600.0
    max_adapter_bytes: int = 64 * 1024 * 1024
    timeout: float = 300.0
    max_streams: int = 4
    stream_idle_seconds: float = 30.0
    max_stream_message_bytes: int = 4 * 1024 * 1024
    allow_upload: bool = False


@dataclass
class Service:
    """A loaded server: ``engine`` (workers with Converters), ``registry`` and ``model`` facts."""

    engine: Engine
    registry: AdapterRegistry
    model: ModelInfo

    def stop(self) -> None:
        self.engine.stop()


def load_service(factory: Callable[[], Converter], adapters: str | os.PathLike, workers: int = 1,
                 queue_size: int = 8) -> Service:
    """Check the adapter folder, then build ``workers`` Converters with ``factory``."""
    registry = AdapterRegistry(adapters)
    engine = Engine(factory, workers=workers, queue_size=queue_size)
    return Service(engine, registry, model_info(engine.converter))
