"""What runs on a worker for a request: select its adapters and pitch method, then convert."""

from __future__ import annotations

import os
import time

import numpy as np

from rvc_lora.serve.engine import Worker
from rvc_lora.serve.errors import library_error
from rvc_lora.serve.metrics import ServeMetrics
from rvc_lora.serve.options import ConvertRequest
from rvc_lora.serve.registry import AdapterRegistry
from rvc_lora.utils import RVCLoraError


def use_request(worker: Worker, request: ConvertRequest, metrics: ServeMetrics, registry: AdapterRegistry) -> None:
    """Select the request's pitch method and adapters on ``worker``; problems name the option."""
    conv = worker.converter
    if request.f0_method != conv.f0_method:
        try:
            conv.set_f0_method(request.f0_method)
        except RVCLoraError as exc:
            raise library_error(exc, 422, "options.f0_method") from None
    try:
        metrics.swap(worker.use(request.adapters))
    except (RVCLoraError, OSError) as exc:
        raise library_error(exc, 422, "options.adapters", (f"{registry.folder}{os.sep}", "")) from None


def convert_job(worker: Worker, request: ConvertRequest, audio: np.ndarray, sr: int, metrics: ServeMetrics,
                 registry: AdapterRegistry) -> tuple[np.ndarray, int, float]:
    """Runs on a worker: select the adapters and pitch method, convert; returns (audio, rate, compute seconds)."""
    use_request(worker, request, metrics, registry)
    conv = worker.converter
    before = dict(conv.times.__dict__)
    start = time.perf_counter()
    try:
        out, out_sr = conv.convert(audio, sr, request.options)
    except RVCLoraError as exc:
        raise library_error(exc, 422, "audio") from None
    compute = time.perf_counter() - start
    for stage in ("pitch", "content", "index", "synthesis", "other"):
        metrics.compute_seconds.labels(stage).inc(getattr(conv.times, stage) - before[stage])
    return out, out_sr, compute
